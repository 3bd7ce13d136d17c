"""MILR's latent space, for search strategies: a prompt's caches, and plans and images from token prefixes.

Reference: Mi et al., "Improving Multimodal Image Generation via Test-Time Latent Reasoning"
(MILR, arXiv 2509.22761), as specified in ``docs/milr-method.md`` sections 1.1-1.3. The latents
are the final-normed last-layer hidden states that feed a MUG model's heads: ``z_t`` for the first
``count_latents(text_fraction, M)`` plan tokens and ``z_v`` (a [cond, uncond] pair per position)
for the first ``count_latents(image_fraction, N)`` image tokens, both taken from one ordinary
generation (:meth:`LatentSpace.initial`). A strategy turns latents into token prefixes through the
heads (``model.text_head`` / ``model.image_logits``: argmax, or :func:`sample_tokens`) and
:meth:`LatentSpace.decode` turns prefixes into candidates: the plan prefix is continued greedily,
the image prefix is forced and the rest of the image is sampled on the (new) plan.

For plugin authors (``reinforce`` and ``cma_es`` use it the same way)::

    from milr.interfaces import Candidate, Search
    from milr.search.latent_space import LatentSpace, count_latents, sample_tokens

    class MySearch(Search):
        def _start(self):
            self.space = LatentSpace(self.model, self.task.prompt, self.generator)

        def _propose(self):
            if self.step == 0:
                text, img, pixels = self.space.initial()      # hidden states of the plan and image
                self.z = img.hidden[0, :count_latents(0.02, img.tokens.shape[1])]
                return [Candidate(image=pixels[0], step=0, tokens=img.tokens[0], text=text.texts[0])]
            k = self.affordable(4)
            logits = self.model.image_logits(self.z, self.space.cfg) / self.space.temperature
            prefixes = sample_tokens(logits, self.generator, k)           # [k, L]
            plans, tokens, pixels = self.space.decode(k, image_prefixes=prefixes)
            return [Candidate(image=pixels[i], step=self.step, tokens=tokens[i], text=plans[i]) for i in range(k)]

        def _update(self, candidates, rewards):
            ...  # move self.z

Every model call goes through ``space.model`` (the search's ``self.model``), so budgets are
counted and, with ``run.batch_prompts``, the runner merges these calls with other prompts'.
Randomness comes only from the prompt's ``generator``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from milr.interfaces import MUGModel

__all__ = ["LatentSpace", "count_latents", "sample_tokens"]


def count_latents(fraction: float, n: int) -> int:
    """Number of leading positions a fraction selects (at least one when both are positive).

    Deviation from the released code, for tiny models only: ``max(1, floor(fraction * n))``, so a
    16-token toy image still has an image latent; for Janus-Pro (576 image tokens, fraction 0.02)
    this is the code's 11.
    """
    if fraction < 0 or fraction > 1:
        raise ValueError(f"a latent fraction must be in [0, 1], got {fraction}")
    if n <= 0 or fraction == 0:
        return 0
    return min(n, max(1, int(math.floor(fraction * n))))


def sample_tokens(logits: torch.Tensor, generator: torch.Generator, k: int) -> torch.Tensor:
    """``k`` independent draws per position from ``softmax(logits)`` ``[L, V]`` -> ``[k, L]``."""
    if logits.shape[0] == 0:
        return torch.zeros(k, 0, dtype=torch.long, device=logits.device)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, k, replacement=True, generator=generator).T.contiguous()


class LatentSpace:
    """One prompt's caches and decoder: plans and images from (text, image) token prefixes.

    The prompt is encoded once (``encode_prompts``), once more per batch width the search uses (a
    ``k``-row state of the same prompt, reused by every later step), and an image context is
    encoded once per distinct list of plans (the last 8 are kept: plans change every step when
    the text latents move).

    Args:
        model: the MUG model (the search's ``self.model``).
        prompt: the prompt text.
        generator: the prompt's generator; every image sample draws from it.
        reasoning: write a plan before the image (MILR does); ``False`` conditions on the prompt alone.
        cfg / temperature: image sampling (the model's defaults if ``None``; temperature > 0).
        max_text_tokens: cap on the plan's length (the model's default if ``None``).
        use_prompt_cache: reuse the prompt's KV cache; ``False`` makes the model recompute the
            prefix at every call (what the step-cost benchmark compares).
    """

    def __init__(
        self,
        model: MUGModel,
        prompt: str,
        generator: torch.Generator,
        *,
        reasoning: bool = True,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        max_text_tokens: Optional[int] = None,
        use_prompt_cache: bool = True,
    ):
        self.model = model
        self.prompt = prompt
        self.generator = generator
        self.reasoning = reasoning
        self.cfg = model.default_cfg if cfg is None else float(cfg)
        self.temperature = model.default_temperature if temperature is None else float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.max_text_tokens = max_text_tokens
        self.use_prompt_cache = use_prompt_cache
        self._states: dict[int, Any] = {1: model.encode_prompts([prompt])}
        self._contexts: dict[tuple, Any] = {}
        self.plan: Optional[str] = None  # the initial generation's plan

    def state(self, rows: int) -> Any:
        """The prompt encoded as ``rows`` identical rows (built once per width)."""
        if rows not in self._states:
            self._states[rows] = self.model.encode_prompts([self.prompt] * rows)
        return self._states[rows]

    def context(self, plans: Optional[list[str]], rows: int) -> Any:
        """The image context of ``rows`` rows with ``plans`` (one per row; ``None``: no plan)."""
        key = (rows, tuple(plans) if plans is not None else None)
        if key not in self._contexts:
            if len(self._contexts) >= 8:  # plans change every step in text mode; keep a few
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[key] = self.model.image_context(self.state(rows), plans)
        return self._contexts[key]

    def initial(self):
        """One ordinary generation with hidden states: ``(TextResult | None, ImageResult, pixels)``."""
        text = None
        if self.reasoning:
            text = self.model.reason(self.state(1), max_new_tokens=self.max_text_tokens, use_prompt_cache=self.use_prompt_cache)
            self.plan = text.texts[0]
        ctx = self.context([self.plan] if self.reasoning else None, 1)
        img = self.model.sample_image(
            ctx, num_samples=1, cfg=self.cfg, temperature=self.temperature, generator=self.generator,
            return_hidden=True, use_prompt_cache=self.use_prompt_cache,
        )
        if img.hidden is None:
            raise RuntimeError(f"{type(self.model).__name__}.sample_image returned no hidden states; latent search needs them")
        return text, img, self.model.decode_image(img.tokens)

    def decode(
        self,
        rows: int,
        text_prefixes: Optional[list[torch.Tensor]] = None,
        image_prefixes: Optional[torch.Tensor] = None,
    ) -> tuple[Optional[list[str]], torch.Tensor, torch.Tensor]:
        """Decode ``rows`` candidates as one batch: ``(plans, image tokens [rows, N], pixels)``.

        ``text_prefixes`` (one id tensor per row) forces the plan's first tokens, which are then
        continued greedily; without it the initial plan is reused. ``image_prefixes`` ``[rows, L]``
        forces the first image tokens; the rest are sampled on the (new) plan.
        """
        plans: Optional[list[str]] = [self.plan] * rows if self.reasoning else None
        if text_prefixes is not None:
            text = self.model.reason(
                self.state(rows), prefix_ids=text_prefixes, max_new_tokens=self.max_text_tokens,
                use_prompt_cache=self.use_prompt_cache,
            )
            plans = text.texts
        ctx = self.context(plans, rows)
        img = self.model.sample_image(
            ctx, num_samples=1, prefix_tokens=image_prefixes, cfg=self.cfg, temperature=self.temperature,
            generator=self.generator, return_hidden=False, use_prompt_cache=self.use_prompt_cache,
        )
        return plans, img.tokens, self.model.decode_image(img.tokens)
