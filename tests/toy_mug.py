"""A tiny, deterministic test double of :class:`milr.interfaces.MUGModel`, and a critic with a known optimum.

Not part of the package: tests (and the runner's tests, via ``model: {name: "toy_mug:ToyMUG"}`` and
``critics: [{name: "toy_mug:TargetTokenCritic"}]``) import it from ``tests/``.

``ToyMUG`` mimics the structure MILR relies on (Janus-Pro as used in arXiv 2509.22761) with a
fixed random "transformer" that has no attention but the same data flow:

* reasoning: ``h_i = tanh(p + A h_{i-1} + E_t[tok_{i-1}])`` with ``p`` a per-prompt vector, the
  text head ``W_t h + b_t`` and greedy decoding until EOS (id 0) or ``max_text_tokens``;
* image context: the cond row is ``P p + coupling * mean_j C[plan_j]`` (the plan's tokens move
  the image distribution: ``C[j]`` points along the image head's row for image token
  ``j % image_vocab``), the uncond row is a fixed vector;
* images: ``h_i = tanh(ctx + E_v[tok_{i-1}] + pos_i)`` per CFG row, the image head
  ``W_v h + b_v``, CFG ``u + w (c - u)``, multinomial sampling; forced prefixes are honoured;
* ``decode_image`` paints each token as a flat palette colour on a square grid;
* batching (``run.batch_prompts``): states and contexts of several prompts merge and split by rows,
  ``sample_image`` takes one generator per prompt row, ``reason`` counts tokens per row.

Counters a test can read: ``counter`` (text tokens; image tokens counting both CFG rows, forced
positions included), ``prompt_encodes`` (prompt prefixes encoded: ``encode_prompts`` and
``use_prompt_cache=False`` recomputations) and ``context_encodes`` (image-context rows encoded).

``TargetTokenCritic`` reads the tokens back from the pixels and returns the fraction of the first
``positions`` image tokens equal to ``target`` (``metadata["target"]`` overrides it): the optimum,
1.0, is known and reachable by forcing the image prefix.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from milr.interfaces import Critic, ImageResult, MUGModel, TextResult, TokenCounter, generator_runs, multinomial_rows

EOS = 0


def palette(image_vocab: int) -> torch.Tensor:
    """Distinct RGB colours ``[V, 3]`` in [0.05, 0.95] for the image tokens (fixed seed)."""
    g = torch.Generator().manual_seed(12345)
    return 0.05 + 0.9 * torch.rand(image_vocab, 3, generator=g)


def _prompt_seed(prompt: str) -> int:
    return zlib.crc32(prompt.encode("utf-8"))


@dataclass
class ToyState:
    prompts: list[str]
    vecs: torch.Tensor  # [B, H] per-prompt vectors ("the KV cache")


@dataclass
class ToyContext:
    cond: torch.Tensor  # [B, H]
    uncond: torch.Tensor  # [B, H]
    plans: Optional[list[str]]


class ToyMUG(MUGModel):
    """A controllable MUGModel; every argument is a plain number so a YAML recipe can build it."""

    def __init__(
        self,
        text_vocab: int = 12,
        image_vocab: int = 8,
        hidden_size: int = 16,
        max_text_tokens: int = 10,
        image_tokens: int = 16,
        image_size: int = 8,
        cfg: float = 3.0,
        temperature: float = 1.0,
        coupling: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        grid = int(round(math.sqrt(image_tokens)))
        if grid * grid != image_tokens:
            raise ValueError(f"image_tokens must be a square number, got {image_tokens}")
        if image_size % grid:
            raise ValueError(f"image_size ({image_size}) must be a multiple of the grid side ({grid})")
        if text_vocab < 2 or image_vocab < 2:
            raise ValueError("text_vocab and image_vocab must be >= 2")
        self.text_vocab, self.image_vocab = text_vocab, image_vocab
        self.hidden_size = hidden_size
        self.max_text_tokens = max_text_tokens
        self.image_tokens = image_tokens
        self.image_size = image_size
        self.grid = grid
        self.default_cfg = cfg
        self.default_temperature = temperature
        self.coupling = coupling
        self.device = torch.device("cpu" if device in ("auto",) else device)
        self.dtype = torch.float32  # the toy always computes in float32
        self.counter = TokenCounter()
        self.prompt_encodes = 0
        self.context_encodes = 0

        g = torch.Generator().manual_seed(seed)
        H = hidden_size
        r = lambda *s, scale=1.0: scale * torch.randn(*s, generator=g)  # noqa: E731
        self.A = r(H, H, scale=0.5 / math.sqrt(H))
        self.E_t = r(text_vocab, H, scale=0.5)
        self.bos_t = r(H, scale=0.5)
        self.W_t = r(text_vocab, H, scale=1.0)
        self.b_t = torch.zeros(text_vocab)
        self.b_t[EOS] = -2.0  # EOS is possible but rare, so plan lengths vary a little
        self.P = r(H, H, scale=0.3 / math.sqrt(H))
        self.W_v = r(image_vocab, H, scale=0.25)
        self.b_v = torch.zeros(image_vocab)
        self.E_v = r(image_vocab, H, scale=0.3)
        self.bos_v = r(H, scale=0.3)
        self.pos = r(image_tokens, H, scale=0.3)
        self.uncond_vec = r(H, scale=0.3)
        rows = self.W_v[torch.arange(text_vocab) % image_vocab]
        self.C = rows / rows.norm(dim=-1, keepdim=True) + r(text_vocab, H, scale=0.2)
        self.C[EOS] = 0.0
        self.palette = palette(image_vocab)

    # -- text ------------------------------------------------------------------------------------
    def _prompt_vec(self, prompt: str) -> torch.Tensor:
        return torch.randn(self.hidden_size, generator=torch.Generator().manual_seed(_prompt_seed(prompt)))

    def encode_prompts(self, prompts: list[str]) -> ToyState:
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("encode_prompts needs a non-empty list of strings")
        self.prompt_encodes += len(prompts)
        return ToyState(list(prompts), torch.stack([self._prompt_vec(p) for p in prompts]))

    def decode_text(self, ids: torch.Tensor) -> str:
        return " ".join(f"t{int(i)}" for i in ids)

    def _plan_ids(self, plan: str) -> list[int]:
        out = []
        for w in plan.split():
            if w.startswith("t") and w[1:].isdigit() and int(w[1:]) < self.text_vocab:
                out.append(int(w[1:]))
        return out

    def reason(
        self,
        state: ToyState,
        prefix_ids: Optional[list[torch.Tensor]] = None,
        max_new_tokens: Optional[int] = None,
        use_prompt_cache: bool = True,
    ) -> TextResult:
        B = len(state.prompts)
        if prefix_ids is not None and len(prefix_ids) != B:
            raise ValueError(f"prefix_ids has {len(prefix_ids)} rows for a state of {B} prompts")
        if not use_prompt_cache:
            self.prompt_encodes += B
        limit = self.max_text_tokens if max_new_tokens is None else max_new_tokens
        ids_out, texts, hidden_out, counts = [], [], [], []
        for b in range(B):
            forced = [] if prefix_ids is None else [int(t) for t in prefix_ids[b]]
            p = state.vecs[b]
            h = torch.zeros(self.hidden_size)
            prev = self.bos_t
            ids, hs = [], []
            while len(ids) < max(limit, len(forced)):
                h = torch.tanh(p + self.A @ h + prev)
                tok = forced[len(ids)] if len(ids) < len(forced) else int(self.text_head(h).argmax())
                if tok == EOS and len(ids) >= len(forced):
                    break
                ids.append(tok)
                hs.append(h)
                prev = self.E_t[tok]
            counts.append(len(ids))
            ids_t = torch.tensor(ids, dtype=torch.long)
            ids_out.append(ids_t)
            texts.append(self.decode_text(ids_t))
            hidden_out.append(torch.stack(hs) if hs else torch.zeros(0, self.hidden_size))
        self.counter.add_text(counts)  # per row: a merged batch charges each prompt its own tokens
        return TextResult(ids=ids_out, texts=texts, hidden=hidden_out)

    # -- images ----------------------------------------------------------------------------------
    def image_context(self, state: ToyState, plans: Optional[list[str]] = None) -> ToyContext:
        B = len(state.prompts)
        if plans is not None and len(plans) != B:
            raise ValueError(f"{len(plans)} plans for a state of {B} prompts")
        self.context_encodes += B
        cond = state.vecs @ self.P.T
        if plans is not None:
            extra = []
            for plan in plans:
                ids = self._plan_ids(plan)
                extra.append(self.C[ids].mean(0) if ids else torch.zeros(self.hidden_size))
            cond = cond + self.coupling * torch.stack(extra)
        uncond = self.uncond_vec.expand(B, -1).clone()
        return ToyContext(cond=cond, uncond=uncond, plans=None if plans is None else list(plans))

    def sample_image(
        self,
        context: ToyContext,
        num_samples: int = 1,
        prefix_tokens: Optional[torch.Tensor] = None,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        return_hidden: bool = True,
        use_prompt_cache: bool = True,
    ) -> ImageResult:
        w, T = self._sampling_args(num_samples, cfg, temperature)
        B = context.cond.shape[0]
        R, N = B * num_samples, self.image_tokens
        prefix_tokens = self._check_image_prefix(prefix_tokens, R, self.image_vocab)
        if not use_prompt_cache:
            self.prompt_encodes += B
        ctx = torch.stack([context.cond, context.uncond], dim=1).repeat_interleave(num_samples, dim=0)  # [R, 2, H]
        tokens = torch.zeros(R, N, dtype=torch.long)
        hidden = torch.zeros(R, N, 2, self.hidden_size)
        prev = self.bos_v.expand(R, 2, -1)
        L = 0 if prefix_tokens is None else prefix_tokens.shape[1]
        runs = generator_runs(generator, B, num_samples)
        for i in range(N):
            h = torch.tanh(ctx + prev + self.pos[i])
            hidden[:, i] = h
            if i < L:
                tok = prefix_tokens[:, i].long()
            else:
                logits = self.image_logits(h, w) / T
                tok = multinomial_rows(torch.softmax(logits, -1), runs)
            tokens[:, i] = tok
            prev = self.E_v[tok].unsqueeze(1).expand(R, 2, -1)
        self.counter.add_image(2 * R * N)
        return ImageResult(tokens=tokens, hidden=hidden if return_hidden else None, cfg=w, temperature=T)

    def decode_image(self, tokens: torch.Tensor) -> torch.Tensor:
        R = tokens.shape[0]
        cells = self.palette[tokens.long()].view(R, self.grid, self.grid, 3).permute(0, 3, 1, 2)
        k = self.image_size // self.grid
        return cells.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3).contiguous()

    # -- many prompts in one batch -----------------------------------------------------------------
    batches_prompts = True

    def merge_rows(self, parts: list) -> Any:
        if all(isinstance(p, ToyState) for p in parts):
            return ToyState([q for p in parts for q in p.prompts], torch.cat([p.vecs for p in parts]))
        plans = None if any(p.plans is None for p in parts) else [q for p in parts for q in p.plans]
        return ToyContext(torch.cat([p.cond for p in parts]), torch.cat([p.uncond for p in parts]), plans)

    def split_rows(self, batch: Any, rows: list[int]) -> list:
        out, start = [], 0
        for r in rows:
            end = start + r
            if isinstance(batch, ToyState):
                out.append(ToyState(batch.prompts[start:end], batch.vecs[start:end]))
            else:
                plans = None if batch.plans is None else batch.plans[start:end]
                out.append(ToyContext(batch.cond[start:end], batch.uncond[start:end], plans))
            start = end
        return out

    # -- heads -----------------------------------------------------------------------------------
    def text_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.W_t.T + self.b_t

    def image_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.W_v.T + self.b_v

    def yes_probability(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        # Not a real judge: a smooth function of the pixels, enough for plumbing tests.
        return images.mean(dim=(1, 2, 3)).clamp(0, 1)


def read_tokens(images: torch.Tensor, image_vocab: int, image_tokens: int) -> torch.Tensor:
    """Invert :meth:`ToyMUG.decode_image`: the nearest palette colour at each cell's centre."""
    grid = int(round(math.sqrt(image_tokens)))
    k = images.shape[-1] // grid
    centres = images[:, :, k // 2 :: k, k // 2 :: k][:, :, :grid, :grid]  # [R, 3, g, g]
    rgb = centres.permute(0, 2, 3, 1).reshape(images.shape[0], -1, 3)
    d = ((rgb.unsqueeze(2) - palette(image_vocab).view(1, 1, -1, 3)) ** 2).sum(-1)
    return d.argmin(-1)


class TargetTokenCritic(Critic):
    """Fraction of the first ``positions`` image tokens equal to ``target`` (optimum 1.0)."""

    def __init__(self, target: int = 1, positions: int = 4, image_vocab: int = 8, image_tokens: int = 16):
        if not 0 <= target < image_vocab:
            raise ValueError(f"target must be in [0, {image_vocab}), got {target}")
        if not 1 <= positions <= image_tokens:
            raise ValueError(f"positions must be in [1, {image_tokens}], got {positions}")
        self.target, self.positions = target, positions
        self.image_vocab, self.image_tokens = image_vocab, image_tokens
        self.init_args = dict(target=target, positions=positions, image_vocab=image_vocab, image_tokens=image_tokens)
        self.calls = 0

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        self.calls += images.shape[0]
        toks = read_tokens(images, self.image_vocab, self.image_tokens)[:, : self.positions]
        md = metadata if metadata else [{}] * images.shape[0]
        target = torch.tensor([int(m.get("target", self.target)) for m in md])
        return (toks == target.unsqueeze(1)).float().mean(1)


def toy_loop(search: Any, model: ToyMUG, critic: Critic, prompt: str = "a toy prompt", seed: int = 0,
             budget: Any = None, metadata: Optional[dict] = None) -> tuple[Any, list[float]]:
    """The runner's ask/tell loop (the Search docstring) for tests: returns (search, rewards per tell)."""
    from milr.interfaces import BudgetLedger, Task

    ledger = BudgetLedger(budget, model.counter)
    task = Task(index=0, prompt=prompt, metadata=metadata or {}, seed=seed)
    search.setup(model, task, ledger, torch.Generator().manual_seed(seed))
    means = []
    while not search.done() and not ledger.exhausted():
        cands = search.ask()
        if not cands:
            break
        images = torch.stack([c.image for c in cands])
        r = critic.score(images, [prompt] * len(cands), [task.metadata] * len(cands))
        ledger.add_critic_calls(len(cands))
        search.tell(cands, r)
        means.append(float(r.mean()))
    return search, means
