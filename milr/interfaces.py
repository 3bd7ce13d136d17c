"""The three interfaces every component implements: ``Critic``, ``Search`` and ``MUGModel``.

``MUGModel`` is shaped after Janus-Pro (Chen et al. 2025, arXiv 2501.17811) as used by MILR
(Mi et al., "Improving Multimodal Image Generation via Test-Time Latent Reasoning",
arXiv 2509.22761): one decoder-only transformer shared by text and image tokens; a text head
(``lm_head``) and a separate image-generation head (``generation_head``) both read the
final-normed last-layer hidden state; images are sampled with classifier-free guidance (CFG) from
a pair of rows per image, the conditional prompt and an unconditional copy, fused as
``u + w * (c - u)``; a VQ decoder maps image tokens to pixels.

MILR's latents are those last-layer hidden states: ``z_t`` for the first fraction of the
reasoning-text tokens and ``z_v`` (a [cond, uncond] pair per position) for the first fraction of
the image tokens. Gradients reach them through the heads only (``text_head`` / ``image_head``),
never through the transformer. A model therefore exposes:

* ``encode_prompts``  -- encode prompts once; the returned state caches reusable prefixes (KV).
* ``reason``          -- the greedy reasoning text (a plan), optionally forced to start with a
  given token prefix, with the hidden state that produced each token.
* ``image_context``   -- the cond/uncond image-generation prefix (prompt + plan), encoded once.
* ``sample_image``    -- CFG sampling of image tokens, optionally forced to start with a given token
  prefix, with the [cond, uncond] hidden states that produced each token.
* ``text_head`` / ``image_head`` -- the heads, differentiable w.r.t. their input.
* ``decode_image``    -- image tokens to pixels in [0, 1].
* ``yes_probability`` -- understanding: P("yes") to a question about an image (self-judging).

Conventions: images are float tensors ``[B, 3, H, W]`` in ``[0, 1]``; rewards are tensors ``[B]``
where higher is better; batched calls are prompt-major (row ``r`` belongs to prompt
``r // num_samples``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

if TYPE_CHECKING:  # keep ``import milr`` free of torch so ``milr list`` is fast
    import torch

    from milr.cards import CriticCard, ModelCard, SearchCard


# ---------------------------------------------------------------------------------------------
# Critics
# ---------------------------------------------------------------------------------------------
class Critic(ABC):
    """Scores images against prompts. Higher is better; the card states the range.

    Subclasses implement :meth:`score`. ``metadata`` items follow GenEval's schema where a critic
    needs structure (``tag``, ``include`` [{class, count, color?, position?}], ``exclude``).
    A critic whose constructor has a ``model`` parameter receives the loaded MUG model (this is
    how ``self_judge`` reuses the generator's weights).
    """

    card: "CriticCard | None" = None
    registry_name: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every critic's score() checks its input once, here, rather than in each of a dozen
        # critics: a NaN image would otherwise be scored as black (uint8 casts) or poison a batch.
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("score")
        if fn is not None and not getattr(fn, "_checks_images", False) and not getattr(fn, "__isabstractmethod__", False):
            cls.score = _checking_images(fn)  # type: ignore[method-assign]

    @abstractmethod
    def score(self, images: "torch.Tensor", prompts: list[str], metadata: list[dict]) -> "torch.Tensor":
        """Return ``Tensor[B]`` of rewards for ``images`` ``[B, 3, H, W]`` in ``[0, 1]``."""

    def identity(self) -> str:
        """A string that changes whenever scores could change (name, arguments, weights, version).

        Used as part of the score-cache key. Subclasses with weights should include a weight hash.
        """
        args = getattr(self, "init_args", {})
        return f"{self.registry_name or type(self).__name__}:{sorted(args.items())!r}"

    @property
    def name(self) -> str:
        return self.registry_name or type(self).__name__

    def score_images(self, images: Any, prompts: "str | list[str]", metadata: "list[dict] | None" = None) -> "torch.Tensor":
        """:meth:`score` for what users hold: a tensor, PIL image(s), file path(s) or a folder, and one
        prompt or one per image (see :func:`milr.image_inputs.image_batch`)."""
        from milr.image_inputs import image_batch, prompt_list

        x = image_batch(images)
        texts = prompt_list(prompts, x.shape[0])
        return self.score(x, texts, metadata if metadata is not None else [{} for _ in texts])


def given_arg(cls: type, args: dict, name: str) -> Any:
    """``args[name]``, else the default in ``cls``'s constructor (None if it has no such parameter).

    For ``preflight(args)`` class methods, which check a component's resources (weights paths,
    cached hub names) from its recipe arguments before anything is built.
    """
    import inspect

    if name in args:
        return args[name]
    p = inspect.signature(cls.__init__).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


IMAGE_TOLERANCE = 1e-3  # resampling and float16 overshoot [0, 1] by a hair; more is a bug


def check_images(images: Any, critic: str = "critic") -> None:
    """Raise :class:`~milr.errors.NonFiniteError` for NaN/inf pixels or values outside [0, 1]."""
    import torch

    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.numel() == 0:
        return
    x = images.detach()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        from milr.errors import NonFiniteError

        bad = (~finite).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if x.dim() > 1 else [0]
        raise NonFiniteError(f"critic {critic!r} was given images with NaN or infinite pixels (images {bad[:5]}); "
                             "the generator produced them or a caller passed them")
    lo, hi = float(x.min()), float(x.max())
    if lo < -IMAGE_TOLERANCE or hi > 1 + IMAGE_TOLERANCE:
        from milr.errors import NonFiniteError

        raise NonFiniteError(f"critic {critic!r} was given images with values in [{lo:.4g}, {hi:.4g}]; "
                             "images must be floats in [0, 1]")


def _checking_images(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def score(self: Critic, images: Any, *args: Any, **kwargs: Any) -> Any:
        check_images(images, self.name)
        return fn(self, images, *args, **kwargs)

    score._checks_images = True  # type: ignore[attr-defined]
    return score


# ---------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenCounter:
    """Generator tokens decoded by a model, counting both CFG rows of an image token.

    ``add_text`` / ``add_image`` take a total or a list of per-row counts (``reason``: one per
    text row; ``sample_image``: one per image row). Per-row counts let the runner charge each prompt
    of a merged batch exactly what its rows cost (see :attr:`MUGModel.batches_prompts`).
    """

    text_tokens: int = 0
    image_tokens: int = 0

    def add_text(self, n: "int | Sequence[int]") -> None:
        self.text_tokens += _total(n)

    def add_image(self, n: "int | Sequence[int]") -> None:
        self.image_tokens += _total(n)


def _total(n: Any) -> int:
    return int(n) if isinstance(n, (int, float)) or getattr(n, "ndim", 1) == 0 else int(sum(int(x) for x in n))


@dataclass
class Budget:
    """Caps on the compute one prompt may use; ``None`` means no cap."""

    text_tokens: Optional[int] = None
    image_tokens: Optional[int] = None
    generator_tokens: Optional[int] = None  # text + image
    critic_calls: Optional[int] = None  # images scored by the (combined) critic
    seconds: Optional[float] = None


class BudgetLedger:
    """One ledger for every search strategy: generator tokens, critic calls and wall seconds.

    The model counts the tokens it decodes in its :class:`TokenCounter`; the ledger reports the
    difference since :meth:`start`, so strategies compared under one budget spend the same compute.
    """

    def __init__(self, budget: Budget | None = None, counter: TokenCounter | None = None):
        self.budget = budget or Budget()
        self.counter = counter or TokenCounter()
        self.start()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._text0 = self.counter.text_tokens
        self._image0 = self.counter.image_tokens
        self.critic_calls = 0

    @property
    def text_tokens(self) -> int:
        return self.counter.text_tokens - self._text0

    @property
    def image_tokens(self) -> int:
        return self.counter.image_tokens - self._image0

    @property
    def generator_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def add_critic_calls(self, n: int) -> None:
        self.critic_calls += int(n)

    def exclude_seconds(self, seconds: float) -> None:
        """Leave ``seconds`` of wall time out of :attr:`seconds` (work that is not the search's,
        such as held-out diagnostics scored between steps)."""
        self._t0 += max(0.0, float(seconds))

    def exhausted(self) -> bool:
        b = self.budget
        return any(
            cap is not None and used >= cap
            for cap, used in (
                (b.text_tokens, self.text_tokens),
                (b.image_tokens, self.image_tokens),
                (b.generator_tokens, self.generator_tokens),
                (b.critic_calls, self.critic_calls),
                (b.seconds, self.seconds),
            )
        )

    def snapshot(self) -> dict[str, float]:
        return {
            "text_tokens": self.text_tokens,
            "image_tokens": self.image_tokens,
            "generator_tokens": self.generator_tokens,
            "critic_calls": self.critic_calls,
            "seconds": round(self.seconds, 4),
        }


# ---------------------------------------------------------------------------------------------
# MUG models
# ---------------------------------------------------------------------------------------------
@dataclass
class TextResult:
    """Greedy reasoning text for a batch of prompts.

    ``ids[r]`` are the generated reasoning tokens of row ``r`` (no EOS). ``hidden[r]`` is
    ``[len(ids[r]), H]``: the last-layer state whose ``text_head`` gives the logits that chose
    ``ids[r][i]`` (detached).
    """

    ids: list["torch.Tensor"]
    texts: list[str]
    hidden: list["torch.Tensor"]


@dataclass
class ImageResult:
    """Sampled image tokens ``[R, N]`` and the ``[R, N, 2, H]`` (cond, uncond) states behind them."""

    tokens: "torch.Tensor"
    hidden: Optional["torch.Tensor"]
    cfg: float
    temperature: float


def fuse_cfg(cond: "torch.Tensor", uncond: "torch.Tensor", cfg: float) -> "torch.Tensor":
    """Classifier-free guidance as Janus applies it: ``u + w * (c - u)``."""
    return uncond + cfg * (cond - uncond)


def generator_runs(generator: Any, prompts: int, num_samples: int) -> list[tuple[int, int, Any]]:
    """``sample_image``'s random sources as ``(start, end, generator)`` runs of its ``prompts * num_samples`` rows.

    ``generator`` is one ``torch.Generator`` (or None: the global one) for every row, or a list with
    one per prompt row of the context (row ``r`` draws with ``generator[r // num_samples]``). Rows
    that share a generator object in a row form one run, drawn in one call (:func:`multinomial_rows`),
    exactly as an unbatched call on those rows alone would draw them: a prompt's samples never
    depend on the prompts that share its batch.
    """
    rows = prompts * num_samples
    if not isinstance(generator, (list, tuple)):
        return [(0, rows, generator)]
    if len(generator) != prompts:
        raise ValueError(f"got {len(generator)} generators for a context of {prompts} prompts")
    runs: list[tuple[int, int, Any]] = []
    for b, g in enumerate(generator):
        start = b * num_samples
        if runs and runs[-1][2] is g:
            runs[-1] = (runs[-1][0], start + num_samples, g)
        else:
            runs.append((start, start + num_samples, g))
    return runs


def multinomial_rows(probs: "torch.Tensor", runs: list[tuple[int, int, Any]]) -> "torch.Tensor":
    """One draw per row of ``probs`` ``[R, V]``, each run of rows from its own generator -> ``[R]``.

    Bit-identical to ``torch.multinomial(probs[s:e], 1, generator=g)`` per run: for one sample
    torch draws ``q ~ Exp(1)`` of the run's shape from ``g`` and takes ``argmax(p / q)`` (the
    exponential form of the Gumbel-max trick, ``aten/src/ATen/native/Distributions.cpp``). Only
    the draws stay per run; the validity check, division and argmax run once over all rows,
    which is what makes many prompts' rows cheaper together than one call per prompt.
    """
    import torch

    if probs.dim() != 2:
        raise ValueError(f"probs must be [rows, vocab], got shape {tuple(probs.shape)}")
    low, high = torch.aminmax(probs)  # one pass over the rows for torch's check (NaN fails both)
    if not bool(((high < float("inf")) & (low >= 0)).item()):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    q = torch.empty_like(probs)
    for s, e, g in runs:
        exponential_rows(q[s:e], g)
    # p / q into q's own storage: the same quotients, one [rows, vocab] buffer fewer per token.
    return torch.div(probs, q, out=q).argmax(dim=-1)


def exponential_rows(out: "torch.Tensor", generator: Any = None) -> "torch.Tensor":
    """Fill ``out`` with the Exp(1) draws ``out.exponential_(1, generator=generator)`` makes.

    On the CPU torch draws, element by element, a double ``u ~ U[0, 1)`` (53 random bits) and
    returns ``-log1p(-u)`` cast to ``out``'s dtype (``aten/src/ATen/core/TransformationHelper.h``);
    that scalar loop took an eighth of a batched image-sampling call (py-spy, 60 prompts at once).
    Drawing the same doubles with ``uniform_`` (the same generator stream, element by element) and
    taking ``log1p`` vectorised is about 1.6x faster. The vectorised ``log1p`` may differ from libm's
    in the double's last bit, so float64 keeps torch's own kernel; for float32 / bfloat16 / float16
    the cast hides that bit (0 of 3 x 10^8 float32 draws differed in a one-off check;
    ``tests/test_batching.py`` checks 5 x 10^6 per dtype). CUDA has its own kernel: unchanged.
    """
    import torch

    if out.device.type != "cpu" or out.dtype == torch.float64 or not out.dtype.is_floating_point:
        return out.exponential_(1, generator=generator)
    u = torch.empty(out.shape, dtype=torch.float64).uniform_(0, 1, generator=generator)
    return out.copy_(u.neg_().log1p_().neg_())


class MUGModel(ABC):
    """A unified multimodal understanding-and-generation model, as the latent search needs it.

    Attributes every implementation sets: ``card``, ``image_tokens`` (tokens per image),
    ``hidden_size``, ``default_cfg``, ``default_temperature``, ``device``, ``dtype`` and
    ``counter`` (a :class:`TokenCounter` the model increments for every token it decodes,
    counting both CFG rows of an image token).
    """

    card: "ModelCard | None" = None
    registry_name: str | None = None
    image_tokens: int
    hidden_size: int
    default_cfg: float
    default_temperature: float
    counter: TokenCounter

    # -- prompts and reasoning ---------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Any:
        """Encode the reasoning-stage prefix of each prompt once; the state caches it (KV)."""

    @abstractmethod
    def reason(
        self,
        state: Any,
        prefix_ids: Optional[list["torch.Tensor"]] = None,
        max_new_tokens: Optional[int] = None,
        use_prompt_cache: bool = True,
    ) -> TextResult:
        """Greedy reasoning text. With ``prefix_ids`` the first tokens are forced, then continued.

        ``hidden`` covers the forced positions too, so a search can re-read them.
        ``use_prompt_cache=False`` recomputes the prompt prefix (for tests of cache reuse).
        """

    @abstractmethod
    def image_context(self, state: Any, plans: Optional[list[str]] = None) -> Any:
        """Encode the cond and uncond image-generation prefix (prompt, plus ``plans`` if given)."""

    @abstractmethod
    def sample_image(
        self,
        context: Any,
        num_samples: int = 1,
        prefix_tokens: Optional["torch.Tensor"] = None,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        generator: Optional["torch.Generator"] = None,
        return_hidden: bool = True,
        use_prompt_cache: bool = True,
    ) -> ImageResult:
        """Sample ``num_samples`` images per prompt of ``context`` with CFG.

        ``prefix_tokens`` (``[R, L]`` with ``R = B * num_samples``) forces the first ``L`` image
        tokens; the rest are sampled. Hidden states of all ``N`` positions are returned.
        A model with :attr:`batches_prompts` also takes a list of ``B`` generators, one per prompt
        row (see :func:`generator_runs`).
        """

    @abstractmethod
    def decode_image(self, tokens: "torch.Tensor") -> "torch.Tensor":
        """Image tokens ``[R, N]`` to pixels ``[R, 3, H, W]`` in ``[0, 1]``."""

    # -- heads ---------------------------------------------------------------------------------
    @abstractmethod
    def text_head(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """Text logits from last-layer states (differentiable w.r.t. ``hidden``)."""

    @abstractmethod
    def image_head(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """Image-token logits from last-layer states of one CFG row (differentiable)."""

    def image_logits(self, hidden_pair: "torch.Tensor", cfg: Optional[float] = None) -> "torch.Tensor":
        """CFG-fused image logits from ``[..., 2, H]`` (cond, uncond) states."""
        w = self.default_cfg if cfg is None else cfg
        return fuse_cfg(self.image_head(hidden_pair[..., 0, :]), self.image_head(hidden_pair[..., 1, :]), w)

    # -- understanding -------------------------------------------------------------------------
    @abstractmethod
    def yes_probability(self, images: "torch.Tensor", questions: list[str]) -> "torch.Tensor":
        """P(answer is yes) for each (image, question) pair; ``Tensor[B]`` in [0, 1]."""

    # -- helpers -------------------------------------------------------------------------------
    def _sampling_args(self, num_samples: int, cfg: Optional[float], temperature: Optional[float]) -> tuple[float, float]:
        """``sample_image``'s shared argument checks; returns ``(cfg, temperature)`` with defaults filled in."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        w = self.default_cfg if cfg is None else float(cfg)
        temp = self.default_temperature if temperature is None else float(temperature)
        if temp < 0:
            raise ValueError(f"temperature must be >= 0, got {temp}")
        return w, temp

    def _check_image_prefix(self, prefix_tokens: Any, rows: int, codebook_size: int) -> Optional["torch.Tensor"]:
        """Validate ``sample_image``'s forced tokens ``[rows, L <= image_tokens]``.

        Returns them as a long tensor on the model's device, or None when there are none.
        """
        import torch

        if prefix_tokens is None:
            return None
        p = torch.as_tensor(prefix_tokens)
        if p.dim() != 2 or p.shape[0] != rows:
            raise ValueError(f"prefix_tokens must be [R, L] with R = prompts * num_samples = {rows}, got {tuple(p.shape)}")
        if p.shape[1] > self.image_tokens:
            raise ValueError(f"prefix_tokens has {p.shape[1]} tokens; an image has {self.image_tokens}")
        if p.is_floating_point():
            raise TypeError("prefix_tokens must be integer token ids")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= codebook_size):
            raise ValueError(f"prefix_tokens has ids outside the image codebook [0, {codebook_size})")
        return p.long().to(getattr(self, "device", "cpu")) if p.shape[1] else None

    def decode_text(self, ids: "torch.Tensor") -> str:  # pragma: no cover - models override
        raise NotImplementedError

    # -- identity ------------------------------------------------------------------------------
    FINGERPRINT_FULL = 1 << 20  # tensors up to this many elements are hashed whole
    FINGERPRINT_SAMPLE = 1 << 16  # elements sampled from each bigger tensor

    def fingerprint(self) -> str:
        """A short hash of the weights and sampling defaults, computed once and kept.

        It keys the scores a model gives as a critic (``self_judge``) in the score cache, so two
        models of one class with different weights never share an entry. Hashed: the class, the
        sampling defaults, and every tensor the instance holds in public attributes (``nn.Module``
        attributes' state dicts and tensor attributes, two levels deep; private ``_`` attributes are
        caches, not weights) by name, shape, dtype and bytes -- all bytes
        up to :attr:`FINGERPRINT_FULL` elements, a strided sample of :attr:`FINGERPRINT_SAMPLE`
        elements above it. Hashing
        tensors rather than checkpoint files covers models built in memory (``MiniMUG.random``,
        test doubles) and costs a 7B model about one sample per tensor instead of a pass over its
        files. Weights changed in place after the first call are not seen (models here are frozen).
        """
        fp = self.__dict__.get("_weights_fingerprint")
        if fp is None:
            fp = self.__dict__["_weights_fingerprint"] = _tensors_fingerprint(self, self.FINGERPRINT_FULL, self.FINGERPRINT_SAMPLE)
        return fp

    # -- many prompts in one batch (run.batch_prompts) ---------------------------------------------
    #: True when the model implements :meth:`merge_rows` and :meth:`split_rows`, accepts one generator
    #: per prompt row in :meth:`sample_image` (see :func:`generator_runs`) and passes per-row counts
    #: to its :class:`TokenCounter` in ``reason``. The runner then merges the calls of several
    #: prompts into one batch; without it, it calls the model once per prompt (correct, not batched).
    batches_prompts: bool = False

    def merge_rows(self, parts: list[Any]) -> Any:
        """One state (from :meth:`encode_prompts`) or image context (from :meth:`image_context`)
        whose prompt rows are the rows of ``parts``, in order; prompts of different lengths are padded.

        ``reason``, ``image_context`` and ``sample_image`` on the result give every row what they
        give on the part it came from (forced prefixes may differ in length from row to row).
        """
        raise NotImplementedError(f"{type(self).__name__} does not merge prompts (batches_prompts is False)")

    def split_rows(self, batch: Any, rows: list[int]) -> list[Any]:
        """The inverse of :meth:`merge_rows`: consecutive blocks of ``rows`` prompt rows of a state or
        image context, each a state or context of its own."""
        raise NotImplementedError(f"{type(self).__name__} does not merge prompts (batches_prompts is False)")

    def generate(self, prompts: list[str], num_samples: int = 1, reasoning: bool = True, generator=None):
        """Plain generation: reasoning text, then images. Returns (TextResult|None, ImageResult, pixels)."""
        state = self.encode_prompts(prompts)
        text = self.reason(state) if reasoning else None
        ctx = self.image_context(state, text.texts if text else None)
        img = self.sample_image(ctx, num_samples=num_samples, generator=generator, return_hidden=False)
        return text, img, self.decode_image(img.tokens)


def _tensors_fingerprint(model: Any, full: int, sample: int) -> str:
    """sha256 (first 16 hex digits) of a model's class, defaults and tensors (see ``MUGModel.fingerprint``)."""
    import hashlib

    import torch

    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for attr in ("image_tokens", "hidden_size", "default_cfg", "default_temperature", "dtype"):
        h.update(f"|{attr}={getattr(model, attr, None)!r}".encode())
    seen: set[int] = set()

    def tensors(obj: Any, prefix: str, depth: int):
        if isinstance(obj, torch.nn.Module):
            yield from ((f"{prefix}.{k}", v) for k, v in obj.state_dict(keep_vars=True).items())
        elif isinstance(obj, torch.Tensor):
            yield prefix, obj
        elif depth < 2 and hasattr(obj, "__dict__") and not isinstance(obj, type):
            for k, v in sorted(vars(obj).items()):
                if not k.startswith("_"):  # private attributes hold state (KV and plan caches), not weights
                    yield from tensors(v, f"{prefix}.{k}", depth + 1)

    for name, t in tensors(model, "", 0):
        if id(t) in seen or not isinstance(t, torch.Tensor):
            continue
        seen.add(id(t))
        flat = t.detach().reshape(-1)
        if flat.numel() > full:  # a strided sample: cheap for billions of weights
            flat = flat[torch.linspace(0, flat.numel() - 1, sample, device=flat.device).long()]
        h.update(f"|{name}:{tuple(t.shape)}:{t.dtype}:".encode())
        h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Search strategies (ask/tell)
# ---------------------------------------------------------------------------------------------
@dataclass
class Task:
    """One prompt to optimise."""

    index: int
    prompt: str
    metadata: dict = field(default_factory=dict)
    id: str = ""
    seed: int = 0


@dataclass
class Candidate:
    """An image proposed by a search, with what produced it."""

    image: "torch.Tensor"  # [3, H, W] in [0, 1]
    step: int
    tokens: Optional["torch.Tensor"] = None  # image token ids, if any
    text: Optional[str] = None  # reasoning text the image was conditioned on
    info: dict = field(default_factory=dict)


class Search(ABC):
    """Ask/tell search over a MUG model's outputs, after nevergrad's optimizer (a template method).

    The runner drives every strategy with the same loop::

        search.setup(model, task, ledger, generator)
        while not search.done() and not ledger.exhausted():
            candidates = search.ask()
            if not candidates:
                break
            search.tell(candidates, critic.score(...))
        best, reward = search.best()

    As nevergrad's ``Optimizer.ask``/``tell`` wrap ``_internal_ask_candidate``/``_internal_tell_candidate``,
    this class does the bookkeeping every strategy shares and a strategy writes its proposal and its
    update:

    * ``_propose() -> list[Candidate]``: the next candidates, scored as one batch. The first call
      returns the ordinary generation (the runner records it as the initial image); ``[]`` ends
      the search. :meth:`affordable` sizes a batch to what the budget still allows.
    * ``_update(candidates, rewards) -> dict | None``: learn from the step's rewards (finite,
      float32, one per candidate, already checked); a returned dict is added to the step's trace
      entry.
    * optionally ``_start()`` (per-prompt state; called by :meth:`setup`) and ``_finished()`` (a
      stop rule of the strategy's own, e.g. a step count or a reward threshold).

    The base class owns:

    * budget arithmetic: :attr:`cost`, the generator tokens of one candidate, measured on every
      proposal (tokens the model counted during ``_propose`` / candidates; a strategy that decodes
      more images than it proposes wraps its decoding in :meth:`metered`), and
      :meth:`affordable` (how many candidates the ledger's caps still allow at that cost);
    * :meth:`done`: ``_finished()``, or not one more candidate affordable;
    * the trace: one entry per step, ``{"step", "rewards" (6 decimals), "best", **update's dict,
      "budget"}``, and :attr:`step` (steps told so far);
    * the best-so-far and last candidate (:meth:`best` returns the best; a strategy that returns
      the last one overrides it).

    All compute goes through ``self.model`` (its token counter feeds the ledger), so strategies
    compared under one budget spend the same compute, and a strategy needs no change to run with
    ``run.batch_prompts`` (its model and critic calls are merged with other prompts' by the
    runner). A strategy may instead override :meth:`ask` and :meth:`tell` themselves, calling
    :meth:`_record` from ``tell``.
    """

    card: "SearchCard | None" = None
    registry_name: str | None = None

    def setup(self, model: MUGModel, task: Task, ledger: BudgetLedger, generator: "torch.Generator") -> None:
        """Start a search for ``task``; ``generator`` is the prompt's only source of randomness."""
        self.model = model
        self.task = task
        self.ledger = ledger
        self.generator = generator
        self.trace: list[dict] = []
        self.step = 0
        self.cost: Optional[int] = None
        self._best: tuple[Candidate, float] | None = None
        self._last: tuple[Candidate, float] | None = None
        self._metered_inside = False
        self._start()

    # -- what a strategy writes ------------------------------------------------------------------
    def _start(self) -> None:
        """Per-prompt state, after :meth:`setup` stored the model, task, ledger and generator."""

    def _propose(self) -> list[Candidate]:
        """The next candidates (the first call: the ordinary generation); ``[]`` ends the search."""
        raise NotImplementedError(f"{type(self).__name__} must implement _propose() and _update() (or ask() and tell())")

    def _update(self, candidates: list[Candidate], rewards: "torch.Tensor") -> Optional[dict]:
        """Learn from the rewards of the last proposal; a returned dict joins the step's trace entry."""
        raise NotImplementedError(f"{type(self).__name__} must implement _propose() and _update() (or ask() and tell())")

    def _finished(self) -> bool:
        """The strategy's own stop rule (checked after every step)."""
        return False

    # -- the template ----------------------------------------------------------------------------
    def ask(self) -> list[Candidate]:
        """Propose candidates to score; an empty list means the search is finished."""
        before = self._spent()
        self._metered_inside = False
        candidates = self._propose()
        if candidates and not self._metered_inside:
            self.cost = max(1, (self._spent() - before) // len(candidates))
        return candidates

    def tell(self, candidates: list[Candidate], rewards: "torch.Tensor") -> None:
        """Receive the rewards of the candidates from the last :meth:`ask`."""
        if not candidates:
            return
        r = self._check_rewards(candidates, rewards)
        self._record(candidates, r)
        extra = self._update(candidates, r) or {}
        self.trace.append({"step": self.step, "rewards": [round(float(x), 6) for x in r], "best": self._best[1],
                           **extra, "budget": self.ledger.snapshot()})
        self.step += 1

    def done(self) -> bool:
        if self.step == 0:
            return False
        return self._finished() or self.affordable(1) == 0

    # -- budget arithmetic -------------------------------------------------------------------------
    def _spent(self) -> int:
        counter = self.model.counter
        return counter.text_tokens + counter.image_tokens

    @contextmanager
    def metered(self, k: int) -> Iterator[None]:
        """Measure :attr:`cost` as the generator tokens spent inside the block per ``k`` candidates
        (for decoding that does not map one-to-one onto the proposal, e.g. a cascade's pool)."""
        before = self._spent()
        yield
        self.cost = max(1, (self._spent() - before) // max(1, k))
        self._metered_inside = True

    def affordable(self, k: int) -> int:
        """How many of ``k`` candidates the ledger's caps still allow: critic calls, and generator /
        image tokens at :attr:`cost` per candidate (a step never starts past a cap)."""
        b = self.ledger.budget
        if b.critic_calls is not None:
            k = min(k, b.critic_calls - self.ledger.critic_calls)
        tokens = self.token_room()
        return max(0, k if tokens is None else min(k, tokens))

    def token_room(self) -> Optional[int]:
        """Candidates the generator / image token caps still allow at :attr:`cost` (None: no cap or no cost yet)."""
        b, ledger = self.ledger.budget, self.ledger
        if not self.cost:
            return None
        room = [max(0, cap - used) // self.cost
                for cap, used in ((b.generator_tokens, ledger.generator_tokens), (b.image_tokens, ledger.image_tokens))
                if cap is not None]
        return min(room) if room else None

    # -- rewards and the best-so-far ---------------------------------------------------------------
    @staticmethod
    def _check_rewards(candidates: list[Candidate], rewards: "torch.Tensor") -> "torch.Tensor":
        """Rewards as a flat float32 CPU tensor, one per candidate."""
        import torch

        r = torch.as_tensor(rewards, dtype=torch.float32).detach().cpu().reshape(-1)
        if r.numel() != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {r.numel()} rewards")
        if not bool(torch.isfinite(r).all()):
            # A NaN would freeze the best-so-far (nothing compares greater) or poison a gradient;
            # the runner drops such candidates first (run.on_nonfinite) so this is a caller's bug.
            raise ValueError(f"rewards must be finite, got {r.tolist()}")
        return r

    def _record(self, candidates: list[Candidate], rewards: "torch.Tensor") -> None:
        """Track the best and last candidate (:meth:`tell` does; an overriding ``tell`` calls it).

        A candidate the runner flagged ``info["nonfinite"]`` (its critic returned NaN/inf and
        ``run.on_nonfinite: skip`` replaced the reward) ranks below every real one.
        """
        import math

        r = [float(x) for x in rewards]

        def rank(c: Candidate, v: float) -> tuple[bool, float]:
            ok = math.isfinite(v) and not c.info.get("nonfinite")
            return ok, v if ok else -math.inf

        i = max(range(len(r)), key=lambda j: rank(candidates[j], r[j]))
        if self._best is None or rank(candidates[i], r[i]) > rank(*self._best):
            self._best = (candidates[i], r[i])
        self._last = (candidates[i], r[i])

    def best(self) -> tuple[Candidate, float]:
        """The candidate to return and its reward (default: best seen)."""
        if self._best is None:
            raise RuntimeError("best() called before any tell()")
        return self._best
