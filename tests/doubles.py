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


class RednessCritic(Critic):
    """Reward = mean red minus mean green: the "truth" of the hackable-critic cases (brightness is hackable)."""

    card = CriticCard(summary="test double: red minus green", score_range=(-1.0, 1.0))

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        return (images[:, 0].float().mean(dim=(1, 2)) - images[:, 1].float().mean(dim=(1, 2))) * self.scale


from milr.interfaces import Candidate, Search  # noqa: E402


class ScriptedSearch(Search):
    """Proposes one flat-colour image per step from a fixed list, ``colours[k]`` at step k (rgb in [0, 1])."""

    def __init__(self, colours: list[list[float]], size: int = 8):
        self.colours, self.size = colours, size

    def setup(self, model, task, ledger, generator) -> None:
        super().setup(model, task, ledger, generator)
        self.step = 0

    def ask(self) -> list[Candidate]:
        if self.step >= len(self.colours):
            return []
        image = torch.tensor(self.colours[self.step], dtype=torch.float32)[:, None, None].expand(3, self.size, self.size)
        return [Candidate(image=image.clone(), step=self.step)]

    def tell(self, candidates: list[Candidate], rewards: torch.Tensor) -> None:
        self._record(candidates, self._check_rewards(candidates, rewards))
        self.step += 1

    def done(self) -> bool:
        return self.step >= len(self.colours)
