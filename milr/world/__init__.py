"""MiniMUG's world: a procedural dataset of shape scenes with GenEval-style prompts, and its exact scorer.

Not a model: the world is what the MiniMUG model (:mod:`milr.models.minimug`) is trained on and
judged in, what the world critics (``world_oracle``, ``world_pref``, ``world_clip``, ``detector``)
are trained or checked against, and the ``minimug-world`` prompt suite. It mirrors GenEval (Ghosh et
al. 2023, arXiv 2310.11513, github.com/djghosh13/geneval; summarised in ``docs/benchmarks.md``) at
toy scale, so a small model trains on a CPU and every image is judged exactly.

Modules:

* :mod:`~milr.world.palette` -- the seven colours, and reading a pixel back as one of them;
* :mod:`~milr.world.scenes` -- objects, scenes, rendering, ground truth, scene sampling
  (scenes that satisfy a prompt and near misses that fail it);
* :mod:`~milr.world.prompts` -- prompts in GenEval's six categories and schema, plans, vocabulary;
* :mod:`~milr.world.questions` -- yes/no questions answered by GenEval's rules;
* :mod:`~milr.world.scorer` -- the exact classical detector and the GenEval verdict it feeds;
* :mod:`~milr.world.suite` -- the registered ``minimug-world`` suite and its train/test split;
* :mod:`~milr.world.data` -- dataset writers (pairwise, pointwise, captions) for critic training.

The world itself (palette, scenes, prompts, questions) is re-exported here; the scorer (which loads
scipy), the suite and the data writers are imported as submodules.
"""

from __future__ import annotations

from . import palette, prompts, questions, scenes
from .palette import *  # noqa: F401,F403 - the world's API, listed in each module's __all__
from .prompts import *  # noqa: F401,F403
from .questions import *  # noqa: F401,F403
from .scenes import *  # noqa: F401,F403

__all__ = [*palette.__all__, *scenes.__all__, *prompts.__all__, *questions.__all__]
