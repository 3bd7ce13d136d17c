"""Small test doubles for the foundation tests (never shipped in the package)."""

from __future__ import annotations

import json
import time
from pathlib import Path

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


class ExitOnceCritic(BrightnessCritic):
    """Brightness, but its process dies (``os._exit``, as a kill or an OOM would) the first ``times`` times
    it scores ``prompt``; each death adds a line to ``marker`` first, so later processes score normally."""

    def __init__(self, marker: str, prompt: str, times: int = 1, delay: float = 0.0):
        super().__init__(delay)
        self.marker, self.prompt, self.times = marker, prompt, times

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        import os

        deaths = open(self.marker).read().count("\n") if os.path.exists(self.marker) else 0
        if self.prompt in prompts and deaths < self.times:
            with open(self.marker, "a") as f:
                f.write("died\n")
            os._exit(1)
        return super().score(images, prompts, metadata)


def write_tiny_clip_config(path: Path, image_size: int = 32) -> Path:
    """An open_clip model config JSON of a one-layer CLIP (built with random weights in about a second).

    open_clip registers configs by file stem, so each test gives its own file name."""
    path.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    return path


def run_with_trained_critic(folder: Path, tmp_path: Path, prompt: str) -> dict:
    """The result line of a two-sample best-of-n run on ToyMUG searched with the trained critic in ``folder``."""
    from milr.records import RunRecord
    from milr.runner import run_recipe

    run_dir = run_recipe({"model": {"name": "toy_mug:ToyMUG"}, "critics": [{"name": "trained", "path": str(folder)}],
                          "search": {"name": "best_of_n", "n": 2}, "prompts": {"inline": [prompt]},
                          "run": {"output_dir": str(tmp_path / "runs")}}, progress=False, log=lambda s: None)
    (result,) = RunRecord(run_dir).results()
    return result
