"""Best-of-N: N independent samples, keep the one the critic likes best.

MILR's baseline (arXiv 2509.22761, Table 1 "+Best-of-N" and Fig. 6; the released code samples
N = 10 images without the reasoning stage). Here the reasoning stage is optional: with
``reasoning=True`` the greedy plan is written once (it is deterministic) and every sample is an
image drawn on prompt + plan; with ``reasoning=False`` images are drawn on the prompt alone.
Samples are drawn ``batch_size`` at a time from one encoded context, and a batch never asks for
more than the ledger has left (critic calls, and generator tokens at the measured cost of one
image), so strategies compared under one budget spend the same compute.

Optional cascade: a cheap critic scores the N - 1 new samples and only the top ``prefilter_k``
are returned to the runner's (expensive) critic. The cheap critic is either built from
``prefilter_critic`` (a registry name or ``module:Class``, built by :mod:`milr.factory` with the MUG
model and its device injected) or passed in by the caller with :meth:`set_prefilter_critic`
before the search starts. Its calls are counted in the trace (``prefilter_calls``), not in the
ledger's ``critic_calls``, which counts the expensive critic only.

``threshold`` stops once the best reward exceeds it (the released code's "first image that
passes", with 0.9 for a 0/1 critic).
"""

from __future__ import annotations

from typing import Optional

import torch

from milr.argtypes import PositiveInt
from milr.interfaces import Candidate, Critic, Search
from milr.registry import CRITICS, SEARCHES


@SEARCHES.register("best_of_n")
class BestOfN(Search):
    """``n`` samples (the first is the initial generation); the best by the critic is returned."""

    def __init__(
        self,
        n: PositiveInt = 20,
        reasoning: bool = True,
        batch_size: PositiveInt = 8,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        prefilter_k: Optional[PositiveInt] = None,
        prefilter_critic: Optional[str] = None,
        threshold: Optional[float] = None,
    ):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if prefilter_k is not None and prefilter_k < 1:
            raise ValueError(f"prefilter_k must be >= 1, got {prefilter_k}")
        if prefilter_critic is not None and prefilter_k is None:
            raise ValueError("prefilter_critic is set but prefilter_k is not; give the number of samples the cheap critic keeps")
        self.n, self.reasoning, self.batch_size = n, reasoning, batch_size
        self.cfg, self.temperature = cfg, temperature
        self.prefilter_k, self.prefilter_critic = prefilter_k, prefilter_critic
        self.threshold = threshold
        self._prefilter: Optional[Critic] = None

    def set_prefilter_critic(self, critic: Critic) -> None:
        """Use ``critic`` as the cascade's cheap first stage (call before :meth:`setup`)."""
        if not hasattr(critic, "score"):
            raise TypeError(f"a prefilter critic needs a score(images, prompts, metadata) method, got {type(critic).__name__}")
        self._prefilter = critic

    def _start(self) -> None:
        if self.prefilter_critic is not None and self._prefilter is None:
            from milr.factory import build_component

            # Built like every critic: the model and its device injected where the constructor
            # takes them, so a GPU run's cheap critic does not score on the CPU.
            self._prefilter = build_component(CRITICS, self.prefilter_critic, {}, model=self.model,
                                              device=str(getattr(self.model, "device", "cpu")))
        if self.prefilter_k is not None and self._prefilter is None:
            raise ValueError("prefilter_k is set but there is no prefilter critic: give prefilter_critic or call set_prefilter_critic()")
        self._state = self.model.encode_prompts([self.task.prompt])
        self._ctx = None
        self._plan: Optional[str] = None
        self._drawn = 0
        self._pending = 0
        self._prefilter_calls = 0

    def _sample(self, k: int, hidden: bool = False):
        # The plan is written once, so a sample's cost is its image alone.
        with self.metered(k):
            img = self.model.sample_image(self._ctx, num_samples=k, cfg=self.cfg, temperature=self.temperature,
                                          generator=self.generator, return_hidden=hidden)
        self._drawn += k
        return img.tokens, self.model.decode_image(img.tokens)

    def _room(self) -> int:
        """How many more images the budget allows (critic calls; generator tokens at measured cost)."""
        room = self.n - self._drawn
        if self.prefilter_k is None:
            return self.affordable(room)
        tokens = self.token_room()  # the cheap critic's calls are not the ledger's: only tokens cap the pool
        return max(0, room if tokens is None else min(room, tokens))

    def _propose(self) -> list[Candidate]:
        if self._drawn == 0:
            text = self.model.reason(self._state) if self.reasoning else None
            self._plan = text.texts[0] if text is not None else None
            self._ctx = self.model.image_context(self._state, [self._plan] if text is not None else None)
            tokens, pixels = self._sample(1)
            self._pending = 1
            return [Candidate(image=pixels[0], step=0, tokens=tokens[0], text=self._plan, info={"initial": True, "sample": 0})]
        if self.prefilter_k is not None:
            return self._ask_cascade()
        k = min(self.batch_size, self._room())
        if k <= 0:
            return []
        first = self._drawn
        tokens, pixels = self._sample(k)
        self._pending = k
        return [Candidate(image=pixels[i], step=self.step, tokens=tokens[i], text=self._plan, info={"sample": first + i}) for i in range(k)]

    def _ask_cascade(self) -> list[Candidate]:
        pool_tokens, pool_pixels, ids = [], [], []
        while True:
            k = min(self.batch_size, self._room())
            if k <= 0:
                break
            first = self._drawn
            tokens, pixels = self._sample(k)
            pool_tokens.append(tokens)
            pool_pixels.append(pixels)
            ids.extend(range(first, first + k))
        if not ids:
            return []
        tokens, pixels = torch.cat(pool_tokens), torch.cat(pool_pixels)
        cheap = self._prefilter.score(pixels, [self.task.prompt] * len(ids), [self.task.metadata] * len(ids))
        self._prefilter_calls += len(ids)
        keep = torch.as_tensor(cheap, dtype=torch.float32).reshape(-1).argsort(descending=True)[: self.prefilter_k]
        if self.ledger.budget.critic_calls is not None:
            keep = keep[: max(0, self.ledger.budget.critic_calls - self.ledger.critic_calls)]
        self._pending = len(keep)
        return [Candidate(image=pixels[i], step=self.step, tokens=tokens[i], text=self._plan,
                          info={"sample": ids[i], "prefilter_score": float(cheap[i])}) for i in keep.tolist()]

    def _update(self, candidates: list[Candidate], rewards: torch.Tensor) -> dict:
        self._pending = 0
        entry: dict = {"samples": self._drawn}
        if self.prefilter_k is not None:
            entry["prefilter_calls"] = self._prefilter_calls
        return entry

    def _finished(self) -> bool:
        if self.threshold is not None and self._best is not None and self._best[1] > self.threshold:
            return True  # the released BoN code keeps the first passing image
        if self.prefilter_k is not None:
            return self.step >= 2 or self._room() == 0
        return self._pending == 0 and self._room() == 0

    def done(self) -> bool:
        # The cascade's pool is capped by tokens only (the cheap critic's calls are not the
        # ledger's), so the base class's "one more candidate affordable" does not apply to it.
        if self.prefilter_k is not None:
            return self._drawn > 0 and self._finished()
        return super().done()
