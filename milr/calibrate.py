"""``milr calibrate``: a critic's score distribution on a reference set, written as a stats file.

ImageReward (Xu et al., arXiv 2304.05977) publishes its reward's mean and std over a reference set
so scores can be standardised; this generates each prompt's ordinary image once with the recipe's
model and writes every critic's statistics in the format :mod:`milr.critics.normalize` reads. It
lives in the core, not beside the ensemble, because it runs a recipe (the runner imports critics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from milr.critics.normalize import CriticStats, run_stats, write_stats


def calibrate(recipe: Union[str, Path, dict], out: Union[str, Path], overrides: Sequence[str] = (),
              log: Optional[Callable[[str], None]] = None) -> tuple[Path, dict[str, CriticStats]]:
    """Generate each prompt's image once (the ``generate`` search) and write the critics' statistics.

    The recipe's critics, model and prompts are used as they are; its search becomes ``generate``
    (one image per prompt, no search) and its ``combine`` is dropped, since the normalisation being
    calibrated may not exist yet. The runner records every critic's raw score of that image, and
    those scores become the stats file. Returns (stats file, {critic: stats}).
    """
    from milr.recipe import load_recipe
    from milr.runner import run_recipe

    r = load_recipe(recipe, list(overrides) + ["combine=null", "search={name: generate}"])
    if r.run.name is None:
        r.run.name = "calibrate-" + (Path(r.source).stem if r.source else "recipe")
    kwargs = {} if log is None else {"log": log}
    run_dir = run_recipe(r, progress=False, **kwargs)
    stats = run_stats(run_dir, "initial")
    source = {"run": str(Path(run_dir).resolve()), "recipe": r.source, "overrides": list(overrides),
              "prompts": r.prompts.model_dump(exclude_none=True), "images": "initial (search: generate)"}
    return write_stats(stats, out, source), stats
