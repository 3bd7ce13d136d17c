"""No search: one ordinary generation, the base model's output (MILR's "w/o MILR" rows).

With ``reasoning=True`` the model first writes its greedy plan and the image is conditioned on
the prompt plus the plan (MILR's "Text Enhanced Reasoning" baseline, arXiv 2509.22761 Table 1);
with ``reasoning=False`` the image is conditioned on the prompt alone.
"""

from __future__ import annotations

from typing import Optional

import torch

from milr.interfaces import Candidate, Search
from milr.registry import SEARCHES


@SEARCHES.register("generate")
class PlainGeneration(Search):
    """One generation, scored once; what every search's first candidate is."""

    def __init__(self, reasoning: bool = True, cfg: Optional[float] = None, temperature: Optional[float] = None):
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.reasoning, self.cfg, self.temperature = reasoning, cfg, temperature

    def _propose(self) -> list[Candidate]:
        if self.step > 0:
            return []
        state = self.model.encode_prompts([self.task.prompt])
        text = self.model.reason(state) if self.reasoning else None
        ctx = self.model.image_context(state, text.texts if text is not None else None)
        img = self.model.sample_image(ctx, num_samples=1, cfg=self.cfg, temperature=self.temperature,
                                      generator=self.generator, return_hidden=False)
        pixels = self.model.decode_image(img.tokens)
        return [Candidate(image=pixels[0], step=0, tokens=img.tokens[0],
                          text=text.texts[0] if text is not None else None, info={"initial": True})]

    def _update(self, candidates: list[Candidate], rewards: torch.Tensor) -> None:
        return None  # nothing to learn: one generation

    def _finished(self) -> bool:
        return self.step > 0
