"""``world_oracle``: MiniMUG's exact scorer as a critic.

The classical detector of :mod:`milr.world.scorer` plus GenEval's rules
(:mod:`milr.geneval`; Ghosh et al. 2023, github.com/djghosh13/geneval) judge each image against its
prompt's GenEval metadata. Rewards are in [0, 1], higher is better:

* ``mode="binary"`` (default): 1.0 when GenEval would mark the image correct, else 0.0;
* ``mode="partial"``: 1.0 when correct, else ``partial_weight`` times the fraction of GenEval
  sub-checks passed (count, colour, position, exclude), a dense signal for search. With
  ``partial_weight < 1`` every correct image outranks every incorrect one.

The verdicts of the last call (with GenEval-style reasons) are kept in ``last_results``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from milr.argtypes import Fraction
from milr.geneval import GenEvalResult
from milr.interfaces import Critic
from milr.registry import CRITICS

if TYPE_CHECKING:
    import torch

WORLD_SIZE = 32
MODES = ("binary", "partial")


@CRITICS.register("world_oracle")
class WorldOracle(Critic):
    """Exact GenEval-rule verdict on MiniMUG world images ``[B, 3, H, W]`` in [0, 1]."""

    def __init__(self, mode: Literal["binary", "partial"] = "binary", partial_weight: Fraction = 0.5):
        if mode not in MODES:
            raise ValueError(f"world_oracle mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= partial_weight <= 1.0:
            raise ValueError(f"partial_weight must be in [0, 1], got {partial_weight}")
        self.mode = mode
        self.partial_weight = float(partial_weight)
        self.init_args = {"mode": mode, "partial_weight": self.partial_weight}
        self.last_results: list[GenEvalResult] = []

    def score(self, images: "torch.Tensor", prompts: list[str], metadata: list[dict]) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        from milr.world.scorer import score_image

        if len(metadata) != len(images):
            raise ValueError(f"world_oracle needs one metadata dict per image ({len(images)} images, {len(metadata)} metadata)")
        for md in metadata:
            if not md or "include" not in md:
                raise ValueError("world_oracle needs GenEval metadata with 'include' for every image")
        x = images.detach().float().clamp(0.0, 1.0)
        if x.shape[-2:] != (WORLD_SIZE, WORLD_SIZE):
            h, w = x.shape[-2:]
            if h % WORLD_SIZE or w % WORLD_SIZE:
                raise ValueError(f"world_oracle scores {WORLD_SIZE}x{WORLD_SIZE} images (or integer multiples), got {h}x{w}")
            x = F.avg_pool2d(x, kernel_size=(h // WORLD_SIZE, w // WORLD_SIZE))  # area downscale
        arr = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        self.last_results = [score_image(a, md) for a, md in zip(arr, metadata)]
        rewards = []
        for res in self.last_results:
            if res.correct:
                rewards.append(1.0)
            elif self.mode == "partial":
                rewards.append(self.partial_weight * res.partial)
            else:
                rewards.append(0.0)
        return torch.tensor(rewards, dtype=torch.float32, device=images.device)
