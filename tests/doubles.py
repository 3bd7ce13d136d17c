"""Small test doubles for the foundation tests (never shipped in the package)."""

from __future__ import annotations

import time

import torch

from milr.cards import CriticCard
from milr.interfaces import Critic


class BrightnessCritic(Critic):
    """Reward = mean pixel value; ``delay`` seconds per call makes runs slow enough to kill."""

    card = CriticCard(summary="test double: mean brightness", score_range=(0.0, 1.0))

    def __init__(self, delay: float = 0.0, scale: float = 1.0):
        self.delay = delay
        self.scale = scale
        self.calls = 0

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        self.calls += len(images)
        if self.delay:
            time.sleep(self.delay)
        return images.float().mean(dim=(1, 2, 3)) * self.scale


from toy_mug import ToyMUG  # noqa: E402


class CountingToyMUG(ToyMUG):
    """ToyMUG that counts constructions, to prove recipes are validated before any model loads."""

    constructed = 0

    def __init__(self, **kwargs):
        type(self).constructed += 1
        super().__init__(**kwargs)
