"""Shared conformance checks for any :class:`milr.interfaces.MUGModel` adapter.

MILR (arXiv 2509.22761) optimises a MUG model's last-layer hidden states and decodes them through
the model's own heads, so an adapter must keep a few promises exactly; these checks state them.
Use from a test file::

    from mug_conformance import CHECKS, MUGConformance

    SUITE = MUGConformance(lambda: MyModel(...), prompts=[...], questions=[...])

    @pytest.mark.parametrize("check", CHECKS)
    def test_conformance(check):
        SUITE.run(check)

The model is built once per ``MUGConformance`` (from the factory, on first use) and shared by the
checks; checks only look at differences of the token counter.

Conventions the checks rely on (written in ``milr/interfaces.py``):

* CFG is Janus's ``u + w * (c - u)``: weight ``w = 1`` is exactly the conditional row, ``w = 0``
  the unconditional row. (In the other common convention, ``c + w' * (c - u)``, the conditional
  row is ``w' = 0``; ``w = w' + 1``.) Both ends are checked.
* Sampling is ``softmax(fused / temperature)``; a temperature near zero (``1e-5``) makes it the
  argmax of the fused logits, which is how "the logits that were sampled from" are recovered.
* Batched calls are prompt-major: row ``r`` of ``sample_image`` belongs to prompt ``r // num_samples``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from milr.interfaces import ImageResult, MUGModel, TextResult

CHECKS = [
    "text_hidden_reproduces_logits",
    "text_forced_prefix_and_cache",
    "text_batch_independence",
    "image_hidden_reproduces_logits",
    "image_cfg_weight_ends",
    "image_forced_prefix_and_cache",
    "image_forced_positions_reread",
    "image_seed_reproducible",
    "image_batch_independence",
    "image_prompt_major_rows",
    "heads_differentiable",
    "decode_image_range",
    "yes_probability_range",
    "token_counter",
]

COLD = 1e-5  # sampling temperature that is an argmax in practice


class MUGConformance:
    """Runs the conformance checks on the model made by ``factory``.

    ``prompts``: at least two prompts of different word lengths (batching and left padding are
    exercised). ``questions``: one yes/no question per prompt for ``yes_probability``.
    ``atol``: tolerance for hidden-state and logit comparisons (loosen for bf16 models).
    """

    def __init__(
        self,
        factory: Union[Callable[[], MUGModel], MUGModel],
        prompts: list[str],
        questions: Optional[list[str]] = None,
        atol: float = 1e-4,
        max_new_tokens: Optional[int] = None,
        image_prefix_len: int = 3,
    ):
        if len(prompts) < 2:
            raise ValueError("conformance needs at least two prompts")
        self._factory = factory
        self._model: Optional[MUGModel] = factory if isinstance(factory, MUGModel) else None
        self.prompts = list(prompts)
        self.questions = list(questions) if questions else ["is there a circle ?"] * len(prompts)
        self.atol = atol
        self.max_new_tokens = max_new_tokens
        self.image_prefix_len = image_prefix_len

    @property
    def model(self) -> MUGModel:
        if self._model is None:
            self._model = self._factory()
        return self._model

    def run(self, check: str) -> None:
        if check not in CHECKS:
            raise ValueError(f"unknown check {check!r}; known: {CHECKS}")
        getattr(self, "check_" + check)()

    def run_all(self) -> None:
        for c in CHECKS:
            self.run(c)

    # -- helpers -------------------------------------------------------------------------------
    def _reason(self, prompts, **kw) -> TextResult:
        m = self.model
        return m.reason(m.encode_prompts(prompts), max_new_tokens=self.max_new_tokens, **kw)

    def _context(self, prompts, plans=None):
        m = self.model
        return m.image_context(m.encode_prompts(prompts), plans)

    def _sample(self, ctx, seed=0, **kw) -> ImageResult:
        g = torch.Generator().manual_seed(seed)
        return self.model.sample_image(ctx, generator=g, **kw)

    def _close(self, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        assert a.shape == b.shape, f"{what}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}"
        err = (a - b).abs().max().item() if a.numel() else 0.0
        assert err <= self.atol, f"{what}: max abs difference {err:.3g} > {self.atol:g}"

    # -- text ----------------------------------------------------------------------------------
    def check_text_hidden_reproduces_logits(self) -> None:
        res = self._reason(self.prompts)
        assert len(res.ids) == len(res.hidden) == len(res.texts) == len(self.prompts)
        for r, (ids, hid) in enumerate(zip(res.ids, res.hidden)):
            assert hid.shape == (len(ids), self.model.hidden_size), f"row {r}: hidden {tuple(hid.shape)}"
            if len(ids):
                got = self.model.text_head(hid).argmax(-1).cpu()
                assert torch.equal(got, ids.cpu()), f"row {r}: argmax(text_head(hidden)) {got.tolist()} != ids {ids.tolist()}"

    def check_text_forced_prefix_and_cache(self) -> None:
        base = self._reason(self.prompts)
        # Force a prefix that differs from the greedy choice: each row gets the other row's start
        # (or, if that is the same, the second most likely token of the first step).
        prefixes = []
        for r in range(len(self.prompts)):
            other = base.ids[(r + 1) % len(self.prompts)][:2]
            if len(other) == 0 or (len(base.ids[r]) and other[0] == base.ids[r][0]):
                top2 = self.model.text_head(base.hidden[r][:1]).topk(2, -1).indices[0] if len(base.ids[r]) else None
                other = top2[1:2].cpu() if top2 is not None else other
            prefixes.append(other.cpu())
        cached = self._reason(self.prompts, prefix_ids=prefixes)
        fresh = self._reason(self.prompts, prefix_ids=prefixes, use_prompt_cache=False)
        for r, p in enumerate(prefixes):
            assert torch.equal(cached.ids[r][: len(p)].cpu(), p), f"row {r}: forced prefix {p.tolist()} not kept: {cached.ids[r].tolist()}"
            assert torch.equal(cached.ids[r].cpu(), fresh.ids[r].cpu()), f"row {r}: cached {cached.ids[r].tolist()} != recomputed {fresh.ids[r].tolist()}"
            self._close(cached.hidden[r], fresh.hidden[r], f"row {r} text hidden, cached vs recomputed")
            # Positions after the forced prefix are greedy continuations of their own states.
            if len(cached.ids[r]) > len(p):
                tail = self.model.text_head(cached.hidden[r][len(p):]).argmax(-1).cpu()
                assert torch.equal(tail, cached.ids[r][len(p):].cpu()), f"row {r}: continuation is not greedy"

    def check_text_batch_independence(self) -> None:
        together = self._reason(self.prompts)
        for r, p in enumerate(self.prompts):
            alone = self._reason([p])
            assert torch.equal(alone.ids[0].cpu(), together.ids[r].cpu()), f"prompt {r}: ids depend on the batch"
            self._close(alone.hidden[0], together.hidden[r], f"prompt {r} text hidden alone vs batched")
        rev = self._reason(self.prompts[::-1])
        assert [t.tolist() for t in rev.ids[::-1]] == [t.tolist() for t in together.ids], "reordering prompts changed results"

    # -- images --------------------------------------------------------------------------------
    def check_image_hidden_reproduces_logits(self) -> None:
        m = self.model
        ctx = self._context(self.prompts)
        for w in (m.default_cfg, 1.0, 3.0):
            res = self._sample(ctx, num_samples=2, cfg=w, temperature=COLD)
            r_rows = len(self.prompts) * 2
            assert res.tokens.shape == (r_rows, m.image_tokens)
            assert res.hidden is not None and res.hidden.shape == (r_rows, m.image_tokens, 2, m.hidden_size)
            got = m.image_logits(res.hidden, cfg=w).argmax(-1).cpu()
            agree = (got == res.tokens.cpu()).float().mean().item()
            assert agree == 1.0, f"cfg {w}: argmax of fused logits from hidden matches sampled tokens on {agree:.1%} only"

    def check_image_cfg_weight_ends(self) -> None:
        m = self.model
        res = self._sample(self._context(self.prompts), cfg=m.default_cfg)
        h = res.hidden
        cond, uncond = m.image_head(h[..., 0, :]), m.image_head(h[..., 1, :])
        self._close(m.image_logits(h, cfg=1.0), cond, "cfg weight 1 vs conditional row")
        self._close(m.image_logits(h, cfg=0.0), uncond, "cfg weight 0 vs unconditional row")
        # Sampling at weight 1 follows the conditional row alone.
        res1 = self._sample(self._context(self.prompts), cfg=1.0, temperature=COLD)
        got = m.image_head(res1.hidden[..., 0, :]).argmax(-1).cpu()
        assert torch.equal(got, res1.tokens.cpu()), "cfg 1 sampling does not follow the conditional row"
        # The unconditional row must not see the prompt: its states agree across prompts of equal
        # token length is model-specific, so only check it differs from the conditional row.
        assert not torch.allclose(h[..., 0, :].float(), h[..., 1, :].float()), "cond and uncond rows are identical"

    def check_image_forced_prefix_and_cache(self) -> None:
        m = self.model
        ctx = self._context(self.prompts)
        n = 2
        r_rows = len(self.prompts) * n
        g = torch.Generator().manual_seed(123)
        prefix = torch.randint(0, _codebook_size(m), (r_rows, self.image_prefix_len), generator=g)
        a = self._sample(ctx, num_samples=n, prefix_tokens=prefix, seed=7)
        b = self._sample(ctx, num_samples=n, prefix_tokens=prefix, seed=7, use_prompt_cache=False)
        assert torch.equal(a.tokens[:, : prefix.shape[1]].cpu(), prefix), "forced image prefix not kept"
        assert torch.equal(a.tokens.cpu(), b.tokens.cpu()), "cached context and full recompute sample different tokens with the same seed"
        self._close(a.hidden, b.hidden, "image hidden, cached vs recomputed")

    def check_image_forced_positions_reread(self) -> None:
        m = self.model
        ctx = self._context(self.prompts)
        first = self._sample(ctx, seed=3)
        k = self.image_prefix_len
        again = self._sample(ctx, prefix_tokens=first.tokens[:, :k], seed=99)
        self._close(again.hidden[:, :k], first.hidden[:, :k], "hidden states of forced image positions")
        full = self._sample(ctx, prefix_tokens=first.tokens, seed=5)
        assert torch.equal(full.tokens.cpu(), first.tokens.cpu())
        self._close(full.hidden, first.hidden, "hidden states when every image token is forced")

    def check_image_seed_reproducible(self) -> None:
        ctx = self._context(self.prompts)
        a = self._sample(ctx, num_samples=2, seed=11, temperature=1.0)
        b = self._sample(ctx, num_samples=2, seed=11, temperature=1.0)
        c = self._sample(ctx, num_samples=2, seed=12, temperature=1.0)
        assert torch.equal(a.tokens, b.tokens), "same seed, different tokens"
        assert not torch.equal(a.tokens, c.tokens), "different seeds gave identical tokens at temperature 1"

    def check_image_batch_independence(self) -> None:
        together = self._sample(self._context(self.prompts), temperature=COLD)
        for r, p in enumerate(self.prompts):
            alone = self._sample(self._context([p]), temperature=COLD)
            assert torch.equal(alone.tokens[0].cpu(), together.tokens[r].cpu()), f"prompt {r}: image tokens depend on the batch"
            self._close(alone.hidden[0], together.hidden[r], f"prompt {r} image hidden alone vs batched")

    def check_image_prompt_major_rows(self) -> None:
        n = 3
        res = self._sample(self._context(self.prompts), num_samples=n, temperature=COLD)
        single = self._sample(self._context(self.prompts), num_samples=1, temperature=COLD)
        for r in range(len(self.prompts) * n):
            assert torch.equal(res.tokens[r].cpu(), single.tokens[r // n].cpu()), f"row {r} is not a sample of prompt {r // n}"

    def check_heads_differentiable(self) -> None:
        m = self.model
        res = self._sample(self._context(self.prompts[:1]))
        text = self._reason(self.prompts[:1])
        zt = (text.hidden[0][:2] if len(text.ids[0]) else res.hidden[0, :2, 0]).detach().clone().requires_grad_(True)
        zv = res.hidden[0, :2].detach().clone().requires_grad_(True)
        loss = m.text_head(zt).log_softmax(-1).max(-1).values.sum() + m.image_logits(zv).log_softmax(-1).max(-1).values.sum()
        loss.backward()
        assert zt.grad is not None and zt.grad.abs().sum() > 0, "no gradient reaches text latents through text_head"
        assert zv.grad is not None and zv.grad[..., 0, :].abs().sum() > 0 and zv.grad[..., 1, :].abs().sum() > 0, \
            "no gradient reaches both CFG rows of image latents"

    # -- pixels and understanding ----------------------------------------------------------------
    def check_decode_image_range(self) -> None:
        m = self.model
        res = self._sample(self._context(self.prompts), num_samples=2)
        img = m.decode_image(res.tokens)
        assert img.dim() == 4 and img.shape[0] == res.tokens.shape[0] and img.shape[1] == 3, f"decode_image shape {tuple(img.shape)}"
        assert img.is_floating_point(), "decode_image must return floats"
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0, "decode_image outside [0, 1]"

    def check_yes_probability_range(self) -> None:
        m = self.model
        res = self._sample(self._context(self.prompts))
        img = m.decode_image(res.tokens)
        p = m.yes_probability(img, self.questions)
        assert p.shape == (len(self.prompts),), f"yes_probability shape {tuple(p.shape)}"
        assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all(), f"yes_probability outside [0, 1]: {p}"
        # One row alone gives the same answer (no batch leakage).
        p0 = m.yes_probability(img[:1], self.questions[:1])
        self._close(p0, p[:1], "yes_probability alone vs batched")

    def check_token_counter(self) -> None:
        m = self.model
        c = m.counter
        t0, i0 = c.text_tokens, c.image_tokens
        text = self._reason(self.prompts)
        generated = sum(len(x) for x in text.ids)
        assert c.text_tokens - t0 >= generated, f"text counter grew by {c.text_tokens - t0} < {generated} tokens generated"
        assert c.image_tokens == i0, "reasoning counted image tokens"
        ctx = self._context(self.prompts)
        i1 = c.image_tokens
        n = 2
        self._sample(ctx, num_samples=n)
        expect = 2 * len(self.prompts) * n * m.image_tokens
        assert c.image_tokens - i1 == expect, f"image counter grew by {c.image_tokens - i1}, expected {expect} (both CFG rows)"


def _codebook_size(m: MUGModel) -> int:
    """Number of image codes: from the model's config if it says, else the image head's width."""
    cfg = getattr(m, "config", None)
    if cfg is not None and getattr(cfg, "codebook_size", None):
        return int(cfg.codebook_size)
    z = torch.zeros(1, m.hidden_size, dtype=getattr(m, "dtype", torch.float32), device=getattr(m, "device", "cpu"))
    return int(m.image_head(z).shape[-1])
