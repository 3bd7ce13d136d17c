"""MiniMUG: a small Janus-like unified multimodal model of the procedural shape world.

Structure after Janus-Pro (Chen et al. 2025, arXiv 2501.17811), as MILR uses it (Mi et al.,
arXiv 2509.22761): ONE decoder-only transformer (pre-norm, causal, learned positions) shared by
text and image tokens; word-level text tokens with a text head (Janus's ``lm_head``); image
tokens for generation with their own embedding plus an MLP aligner (Janus's ``gen_embed`` +
``gen_aligner``) and a separate image-generation head (Janus's ``gen_head``); image codes for
understanding read through the generation embedding plus a learned mode vector (standing in for
Janus's SigLIP encoder, which a model trained from scratch does not have); a grid-cell embedding
on every image token; a final
norm before both heads, whose inputs are MILR's latents. Images are sampled with classifier-free
guidance from a conditional row and an unconditional row in which every condition token between
[BOS] and [BOI] is replaced by [PAD], fused as ``u + w * (c - u)`` (so ``w = 1`` is the
conditional row alone and ``w = 0`` the unconditional row).

Sequences::

    reasoning:     [BOS] prompt [PLAN] plan... [EOP]                 (plan decoded greedily)
    generation:    [BOS] prompt [PLAN] plan [EOP] [BOI] 64 image tokens
    no-plan:       [BOS] prompt [EOP] [BOI] 64 image tokens
    understanding: [BOS] [IMG] 64 image codes [Q] question [ANS] yes|no

Batches of prompts of different lengths are left-padded; padded keys are masked and each row's
positions count only its real tokens, so a row's result does not depend on its batch-mates.

Constructors: ``MiniMUG()`` (shipped weights), ``MiniMUG(weights=path)`` (a ``.safetensors`` file
or a folder holding ``minimug.safetensors`` + ``config.json``), ``MiniMUG.random(config)`` (tiny,
randomly initialised; for tests) and ``MiniMUG.from_parts(net, tokenizer)``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from milr.interfaces import ImageResult, MUGModel, TextResult, TokenCounter, fuse_cfg, generator_runs, multinomial_rows
from milr.registry import MODELS

from .tokenizer import NUM_TOKENS, PatchTokenizer

SPECIALS = ("[PAD]", "[BOS]", "[PLAN]", "[EOP]", "[BOI]", "[IMG]", "[Q]", "[ANS]", "[UNK]")
PAD, BOS, PLAN, EOP, BOI, IMG, Q, ANS, UNK = range(len(SPECIALS))
WEIGHTS_FILE = "minimug.safetensors"
CONFIG_FILE = "config.json"

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Word-level text tokenisation: lower-case words and numbers; punctuation marks are tokens."""
    return _WORD_RE.findall(text.lower())


@dataclass
class MiniMUGConfig:
    """Architecture and defaults. ``words`` is the text vocabulary after the special tokens."""

    words: list[str] = field(default_factory=lambda: ["a", "photo", "of", "yes", "no"])
    codebook_size: int = 1024
    hidden_size: int = 192
    layers: int = 6
    heads: int = 6
    mlp_ratio: int = 4
    gen_embed_dim: int = 64
    max_positions: int = 192
    max_plan_tokens: int = 40
    image_tokens: int = NUM_TOKENS
    default_cfg: float = 1.5
    default_temperature: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        for w in ("yes", "no"):
            if w not in self.words:
                raise ValueError(f"the text vocabulary must contain {w!r} (understanding answers)")
        dup = {w for w in self.words if self.words.count(w) > 1}
        if dup or set(self.words) & set(SPECIALS):
            raise ValueError(f"text vocabulary has duplicates or special tokens: {sorted(dup | (set(self.words) & set(SPECIALS)))}")

    @classmethod
    def from_dict(cls, d: dict) -> "MiniMUGConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MiniMUG config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Per-layer (key, value) tensors ``[B, heads, >= L, d]`` plus which of the L positions are real.

    A cache made by :meth:`select` with ``room`` has buffers longer than ``L``: the next forwards
    write their keys and values into them in place instead of concatenating the whole cache at
    every token (which took 40% of a MiniMUG image's sampling time).
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor  # [B, L] bool
    image_count: torch.Tensor  # [B] image tokens seen so far (the next one's grid cell)

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The filled positions ``[B, heads, L, d]`` of every layer."""
        n = self.length
        return [(k[:, :, :n], v[:, :, :n]) for k, v in self.kv]

    def select(self, index: torch.Tensor, room: int = 0) -> "KVCache":
        """Rows ``index`` of the batch (repeating rows expands a context to several samples), copied
        into buffers with ``room`` free positions for the tokens to come."""
        n = self.length
        kv = []
        for k, v in self.layers():
            bk = k.new_empty(len(index), k.shape[1], n + room, k.shape[3])
            bv = v.new_empty(len(index), v.shape[1], n + room, v.shape[3])
            bk[:, :, :n].copy_(k.index_select(0, index))
            bv[:, :, :n].copy_(v.index_select(0, index))
            kv.append((bk, bv))
        return KVCache(kv, self.valid.index_select(0, index), self.image_count.index_select(0, index))

    def trimmed(self) -> "KVCache":
        """Without the leading positions that are padding in every row (after selecting rows)."""
        start = _first_real_column(self.valid)
        if start == 0:
            return self
        return KVCache([(k[:, :, start:], v[:, :, start:]) for k, v in self.layers()], self.valid[:, start:], self.image_count)

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """The rows of ``caches`` in one cache, shorter ones left-padded with masked positions
        (positions count real tokens only, so padding does not move a row's positions)."""
        n = max(c.length for c in caches)
        layers = [c.layers() for c in caches]
        kv = [(torch.cat([_pad_left(c[i][0], n, 2) for c in layers]), torch.cat([_pad_left(c[i][1], n, 2) for c in layers]))
              for i in range(len(caches[0].kv))]
        return KVCache(kv, torch.cat([_pad_left(c.valid, n, 1) for c in caches]), torch.cat([c.image_count for c in caches]))


def _pad_left(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``x`` left-padded with zeros (False for masks) to length ``n`` along ``dim``."""
    extra = n - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _first_real_column(valid: torch.Tensor) -> int:
    """Index of the first position that is real in some row (0 when none is padding everywhere)."""
    real = valid.any(0).nonzero()
    return int(real[0]) if len(real) else 0


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, h: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.ln2 = nn.LayerNorm(h)
        self.mlp = nn.Sequential(nn.Linear(h, mlp_ratio * h), nn.GELU(), nn.Linear(mlp_ratio * h, h))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], past: Optional[tuple[torch.Tensor, torch.Tensor]],
                used: int = 0):
        """``past``: the layer's cached keys and values, of which the first ``used`` positions are filled."""
        b, l, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None and past[0].shape[2] >= used + l:  # room left: write in place
            past[0][:, :, used:used + l] = k
            past[1][:, :, used:used + l] = v
            k, v = past[0][:, :, :used + l], past[1][:, :, :used + l]
            new = past
        elif past is not None:
            k = torch.cat([past[0][:, :, :used], k], dim=2)
            v = torch.cat([past[1][:, :, :used], v], dim=2)
            new = (k, v)
        else:
            new = (k, v)
        if mask is None:  # training: no padding inside, plain causal attention
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, l, h)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, new


class ImageHead(nn.Module):
    """Janus's ``gen_head`` (an MLP to code logits) plus a pixel-content term.

    ``logits = W2 gelu(W1 h) + P(gelu(W1 h)) . Q(pixels)``: codes whose centroid patches look alike
    share part of their logit, so colour and shape statistics are learnt across codes instead of
    code by code (with ~2,000 codes and an hour of CPU training that matters).
    """

    def __init__(self, h: int, k: int, pix_dim: int = 32):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(h, h), nn.GELU())
        self.out = nn.Linear(h, k)
        self.query = nn.Linear(h, pix_dim, bias=False)
        self.key = nn.Linear(48, pix_dim, bias=False)

    def forward(self, hidden: torch.Tensor, code_pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(hidden, self.keys(code_pixels))

    def keys(self, code_pixels: torch.Tensor) -> torch.Tensor:
        """The codes' pixel keys ``[K, pix_dim]``: the same at every token, so decoding computes them once."""
        return self.key(code_pixels)

    def logits(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        x = self.proj(hidden)
        return self.out(x) + self.query(x) @ keys.T


class MiniMUGNet(nn.Module):
    """The parameters: embeddings, aligners, transformer, final norm, text and image heads.

    Token ids live in one space: text ``[0, T)``, generation image codes ``[T, T + K)``,
    understanding image codes ``[T + K, T + 2K)``.
    """

    def __init__(self, config: MiniMUGConfig):
        super().__init__()
        c = config
        self.config = c
        h = c.hidden_size
        self.text_vocab = len(SPECIALS) + len(c.words)
        self.text_embed = nn.Embedding(self.text_vocab, h)
        self.gen_embed = nn.Embedding(c.codebook_size, c.gen_embed_dim)
        # Each code's centroid pixels (scaled to [-1, 1]) feed the embedding and the image head,
        # so a code starts out as what it looks like (set from the tokenizer, saved with the net).
        self.register_buffer("code_pixels", torch.zeros(c.codebook_size, 48))
        self.gen_pixels = nn.Linear(48, c.gen_embed_dim)
        self.gen_aligner = nn.Sequential(nn.Linear(c.gen_embed_dim, h), nn.GELU(), nn.Linear(h, h))
        # Understanding reads the codes through the generation embedding plus a learned mode
        # vector (Janus has a pretrained SigLIP encoder here; from scratch, a separate embedding
        # learnt from yes/no answers alone stayed at chance, while generation trains this one on
        # every image token).
        self.und_type = nn.Parameter(torch.zeros(h))
        self.pos_embed = nn.Embedding(c.max_positions, h)
        # Grid-cell embedding of image tokens: the prefix length varies, so sequence positions
        # alone do not tell a token where it sits in the 8x8 grid.
        self.cell_embed = nn.Embedding(c.image_tokens, h)
        self.blocks = nn.ModuleList(Block(h, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(h)
        self.lm_head = nn.Linear(h, self.text_vocab)
        self.gen_head = ImageHead(h, c.codebook_size)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2's scaled init of residual projections
            nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * c.layers))
            nn.init.normal_(blk.mlp[2].weight, std=0.02 / math.sqrt(2 * c.layers))

    def set_code_pixels(self, codebook) -> None:
        """Store the tokenizer's centroids (``[K, 48]`` in 0..255) as the codes' pixel features."""
        cb = torch.as_tensor(codebook, dtype=torch.float32)
        if cb.shape != self.code_pixels.shape:
            raise ValueError(f"codebook shape {tuple(cb.shape)} != {tuple(self.code_pixels.shape)}")
        self.code_pixels.copy_(cb / 127.5 - 1.0)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gen_head(hidden, self.code_pixels)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def gen_offset(self) -> int:
        return self.text_vocab

    @property
    def und_offset(self) -> int:
        return self.text_vocab + self.config.codebook_size

    def embed(self, ids: torch.Tensor, image_before: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors of ``ids`` and the number of image tokens per row including them.

        ``image_before`` ([B]) counts image tokens already in the cache, so a new image token
        gets the grid-cell embedding of its place in the image.
        """
        t, k = self.text_vocab, self.config.codebook_size
        x = torch.zeros(*ids.shape, self.config.hidden_size, dtype=self.text_embed.weight.dtype, device=ids.device)
        is_text = ids < t
        is_img = ~is_text
        if is_text.any():
            x[is_text] = self.text_embed(ids[is_text])
        if is_img.any():
            codes = (ids[is_img] - t) % k
            e = self.gen_embed(codes) + self.gen_pixels(self.code_pixels[codes])
            v = self.gen_aligner(e) + self.und_type * (ids[is_img] >= t + k)[:, None].to(x.dtype)
            seen = is_img.long().cumsum(1) - 1
            if image_before is not None:
                seen = seen + image_before[:, None]
            x[is_img] = v + self.cell_embed(seen[is_img].clamp(0, self.config.image_tokens - 1))
        count = is_img.long().sum(1)
        if image_before is not None:
            count = count + image_before
        return x, count

    def forward(
        self,
        ids: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> tuple[torch.Tensor, Optional[KVCache]]:
        """Final-normed hidden states ``[B, L, H]`` of ``ids`` ``[B, L]``.

        Without ``valid`` and ``cache`` this is plain causal training attention (rows padded on the
        right only). With them, ``valid`` marks real tokens (left padding is False); keys that are
        padding are masked, positions count real tokens only, and the returned cache holds the
        keys/values of past + new tokens.
        """
        b, l = ids.shape
        if valid is None and cache is None:
            if l > self.config.max_positions:
                raise ValueError(f"sequence of {l} tokens exceeds max_positions {self.config.max_positions}")
            x, _ = self.embed(ids)
            x = x + self.pos_embed(torch.arange(l, device=ids.device))[None]
            for blk in self.blocks:
                x, _ = blk(x, None, None)
            return self.norm(x), None
        if valid is None:
            valid = torch.ones(b, l, dtype=torch.bool, device=ids.device)
        past_valid = cache.valid if cache is not None else valid[:, :0]
        all_valid = torch.cat([past_valid, valid], dim=1)
        pos = (all_valid.long().cumsum(1) - 1).clamp_min(0)[:, -l:]
        if int(pos.max()) >= self.config.max_positions:
            raise ValueError(f"sequence exceeds max_positions {self.config.max_positions}")
        lp = past_valid.shape[1]
        q_idx = torch.arange(lp, lp + l, device=ids.device)
        k_idx = torch.arange(lp + l, device=ids.device)
        causal = k_idx[None, :] <= q_idx[:, None]  # [l, lp+l]
        mask = causal[None] & all_valid[:, None, :]
        # A padding query sees no real key; letting it see itself keeps softmax finite (its output
        # is never read by real tokens, whose masks exclude padding keys).
        mask = mask | (k_idx[None, :] == q_idx[:, None])[None]
        mask = mask[:, None]  # [B, 1, l, lp+l]
        x, count = self.embed(ids, cache.image_count if cache is not None else None)
        x = x + self.pos_embed(pos)
        kv = []
        for i, blk in enumerate(self.blocks):
            x, layer_kv = blk(x, mask, cache.kv[i] if cache is not None else None, lp)
            kv.append(layer_kv)
        return self.norm(x), KVCache(kv, all_valid, count)


# ---------------------------------------------------------------------------------------------
# States passed between the MUGModel calls
# ---------------------------------------------------------------------------------------------
@dataclass
class PromptState:
    """Encoded reasoning prefixes ``[BOS] prompt [PLAN]`` (left-padded) and their KV cache."""

    prompts: list[str]
    ids: torch.Tensor  # [B, L]
    valid: torch.Tensor  # [B, L]
    cache: KVCache
    last_hidden: torch.Tensor  # [B, H]: the state that predicts the first plan token


@dataclass
class ImageContext:
    """The cond rows ``[0, B)`` and uncond rows ``[B, 2B)`` of the image prefix, KV cached."""

    prompts: list[str]
    plans: Optional[list[str]]
    ids: torch.Tensor  # [2B, L]
    valid: torch.Tensor
    cache: KVCache
    last_hidden: torch.Tensor  # [2B, H]: the states that predict the first image token

    @property
    def batch_size(self) -> int:
        return len(self.prompts)


def _gather(parts: Sequence[Union[PromptState, ImageContext]], index: torch.Tensor):
    """``(ids, valid, cache, last_hidden)`` of rows ``index`` of ``parts`` put end to end (left-padded
    to one length), without the positions that are padding in every selected row."""
    n = max(p.ids.shape[1] for p in parts)
    ids = torch.cat([_pad_left(p.ids, n, 1) for p in parts]).index_select(0, index)  # PAD is id 0
    valid = torch.cat([_pad_left(p.valid, n, 1) for p in parts]).index_select(0, index)
    cache = (parts[0].cache if len(parts) == 1 else KVCache.concat([p.cache for p in parts])).select(index).trimmed()
    last = torch.cat([p.last_hidden for p in parts]).index_select(0, index)
    start = _first_real_column(valid)
    return ids[:, start:], valid[:, start:], cache, last


def _left_pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD, dtype=torch.long)
    valid = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, n - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            valid[i, n - len(r):] = True
    return ids.to(device), valid.to(device)


def _resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def shipped_weights_dir() -> Path:
    """Folder of the weights shipped in the package (``milr.models.minimug/weights``)."""
    return Path(str(resources.files("milr.models.minimug").joinpath("weights")))


def load_weights_file(path: Union[str, Path]) -> tuple[MiniMUGConfig, dict[str, torch.Tensor], dict]:
    """Read ``(config, tensors, extra config entries)`` from a weights file or folder."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir() or p.suffix != ".safetensors":
        p = p / WEIGHTS_FILE
    cfg_path = p.parent / CONFIG_FILE
    if not p.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(
            f"MiniMUG weights not found: need {p} and {cfg_path}. Train them with "
            f"`milr train minimug recipes/train-minimug.yaml` (or pass weights=<folder or .safetensors>)."
        )
    meta = json.loads(cfg_path.read_text())
    if "model" not in meta:
        raise ValueError(f"{cfg_path} has no 'model' section")
    return MiniMUGConfig.from_dict(meta["model"]), load_file(str(p)), meta


# ---------------------------------------------------------------------------------------------
# The MUGModel
# ---------------------------------------------------------------------------------------------
@MODELS.register("minimug")
class MiniMUG(MUGModel):
    """MiniMUG as a :class:`milr.interfaces.MUGModel` (see the module docstring)."""

    def __init__(
        self,
        weights: Union[str, Path, None] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: Union[str, torch.dtype] = "float32",
        *,
        _parts: Optional[tuple[MiniMUGNet, PatchTokenizer]] = None,
    ):
        if _parts is None:
            config, tensors, meta = load_weights_file(shipped_weights_dir() if weights is None else weights)
            net = MiniMUGNet(config)
            net_sd = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
            missing, unexpected = net.load_state_dict(net_sd, strict=False)
            if missing or unexpected:
                raise ValueError(f"weights do not match the MiniMUG config: missing {missing}, unexpected {unexpected}")
            tokenizer = PatchTokenizer.from_state_dict(tensors)
            self.meta = meta
        else:
            net, tokenizer = _parts
            self.meta = {}
        if tokenizer.codebook_size != net.config.codebook_size:
            raise ValueError(f"tokenizer has {tokenizer.codebook_size} codes but the model expects {net.config.codebook_size}")
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype)
        self.net = net.to(device=self.device, dtype=self.dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = net.config
        self.image_tokens = net.config.image_tokens
        self.hidden_size = net.config.hidden_size
        self.default_cfg = float(net.config.default_cfg)
        self.default_temperature = float(net.config.default_temperature)
        self.counter = TokenCounter()
        self.vocab = list(SPECIALS) + list(net.config.words)
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.yes_id = self.word_to_id["yes"]
        self.no_id = self.word_to_id["no"]

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, net: MiniMUGNet, tokenizer: PatchTokenizer, device="cpu", dtype="float32") -> "MiniMUG":
        return cls(device=device, dtype=dtype, _parts=(net, tokenizer))

    @classmethod
    def random(
        cls,
        config: Union[MiniMUGConfig, dict, None] = None,
        seed: int = 0,
        tokenizer: Optional[PatchTokenizer] = None,
        device="cpu",
        dtype="float32",
    ) -> "MiniMUG":
        """A randomly initialised model (tiny by default: for tests of the plumbing)."""
        if config is None:
            config = MiniMUGConfig(words=_default_words(), codebook_size=64, hidden_size=32, layers=2, heads=2,
                                   gen_embed_dim=16, max_plan_tokens=12)
        elif isinstance(config, dict):
            config = MiniMUGConfig.from_dict(config)
        torch.manual_seed(seed)
        net = MiniMUGNet(config)
        tok = tokenizer or PatchTokenizer.random(config.codebook_size, seed=seed)
        net.set_code_pixels(tok.codebook)
        return cls.from_parts(net, tok, device=device, dtype=dtype)

    # -- text ----------------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        return [self.word_to_id.get(w, UNK) for w in split_words(text)]

    def decode_text(self, ids: torch.Tensor) -> str:
        words = [self.vocab[int(i)] for i in torch.as_tensor(ids).reshape(-1).tolist() if 0 <= int(i) < len(self.vocab)]
        return " ".join(w for w in words if w not in SPECIALS)

    def _check_prompts(self, prompts: list[str]) -> None:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")

    # -- heads ---------------------------------------------------------------------------------
    def text_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net.lm_head(hidden)

    def image_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net.image_logits(hidden)

    # -- reasoning -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptState:
        self._check_prompts(prompts)
        rows = [[BOS] + self.text_ids(p) + [PLAN] for p in prompts]
        ids, valid = _left_pad(rows, self.device)
        h, cache = self.net(ids, valid)
        return PromptState(list(prompts), ids, valid, cache, h[:, -1])

    @torch.no_grad()
    def reason(
        self,
        state: PromptState,
        prefix_ids: Optional[list[torch.Tensor]] = None,
        max_new_tokens: Optional[int] = None,
        use_prompt_cache: bool = True,
    ) -> TextResult:
        b = len(state.prompts)
        max_new = self.config.max_plan_tokens if max_new_tokens is None else int(max_new_tokens)
        forced = [[] for _ in range(b)]
        if prefix_ids is not None:
            if len(prefix_ids) != b:
                raise ValueError(f"prefix_ids has {len(prefix_ids)} rows for {b} prompts")
            forced = [torch.as_tensor(p).reshape(-1).tolist() for p in prefix_ids]
            for f in forced:
                if any(not 0 <= t < self.net.text_vocab for t in f):
                    raise ValueError(f"prefix_ids must be text token ids in [0, {self.net.text_vocab})")
        # Each row's own cap (a longer forced prefix is kept whole), so a row decodes what it would alone.
        caps = [max(max_new, len(f)) for f in forced]
        if use_prompt_cache:
            cache, h = state.cache, state.last_hidden
        else:
            hs, cache = self.net(state.ids, state.valid)
            h = hs[:, -1]
        cache = cache.select(torch.arange(b, device=self.device), room=max(caps, default=0))
        ids: list[list[int]] = [[] for _ in range(b)]
        hidden: list[list[torch.Tensor]] = [[] for _ in range(b)]
        done = [cap <= 0 for cap in caps]
        decoded = [0] * b  # per row, so a merged batch charges each prompt its own tokens
        for t in range(max(caps)):
            greedy = self.text_head(h).argmax(-1).tolist()
            step = []
            for r in range(b):
                tok = forced[r][t] if t < len(forced[r]) else greedy[r]
                step.append(tok)
                if done[r]:
                    continue
                decoded[r] += 1
                if tok == EOP:
                    done[r] = True
                else:
                    ids[r].append(tok)
                    hidden[r].append(h[r])
                done[r] = done[r] or decoded[r] >= caps[r]
            if all(done):
                break
            hs, cache = self.net(torch.tensor(step, device=self.device)[:, None], None, cache)
            h = hs[:, -1]
        self.counter.add_text(decoded)
        id_t = [torch.tensor(x, dtype=torch.long) for x in ids]
        hid = [torch.stack(x) if x else torch.zeros(0, self.hidden_size, dtype=self.dtype, device=self.device) for x in hidden]
        return TextResult(ids=id_t, texts=[self.decode_text(x) for x in id_t], hidden=hid)

    # -- image generation ----------------------------------------------------------------------
    @torch.no_grad()
    def image_context(self, state: Union[PromptState, list[str]], plans: Optional[list[str]] = None) -> ImageContext:
        prompts = state.prompts if isinstance(state, PromptState) else list(state)
        self._check_prompts(prompts)
        if plans is not None and len(plans) != len(prompts):
            raise ValueError(f"{len(plans)} plans for {len(prompts)} prompts")
        cond = []
        for i, p in enumerate(prompts):
            middle = self.text_ids(p) + ([PLAN] + self.text_ids(plans[i]) if plans is not None else []) + [EOP]
            cond.append([BOS] + middle + [BOI])
        # Janus's unconditional row: the same length, every token between BOS and BOI is PAD.
        uncond = [[BOS] + [PAD] * (len(r) - 2) + [BOI] for r in cond]
        ids, valid = _left_pad(cond + uncond, self.device)
        h, cache = self.net(ids, valid)
        return ImageContext(list(prompts), None if plans is None else list(plans), ids, valid, cache, h[:, -1])

    @torch.no_grad()
    def sample_image(
        self,
        context: ImageContext,
        num_samples: int = 1,
        prefix_tokens: Optional[torch.Tensor] = None,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        return_hidden: bool = True,
        use_prompt_cache: bool = True,
    ) -> ImageResult:
        """CFG sampling; ``temperature == 0`` takes the argmax of the fused logits."""
        w, temp = self._sampling_args(num_samples, cfg, temperature)
        b = context.batch_size
        r_rows = b * num_samples
        n = self.image_tokens
        forced = self._check_image_prefix(prefix_tokens, r_rows, self.config.codebook_size)
        forced_len = 0 if forced is None else forced.shape[1]
        rows = torch.arange(b, device=self.device).repeat_interleave(num_samples)
        index = torch.cat([rows, rows + b])  # [cond R; uncond R]
        if use_prompt_cache:
            cache, h = context.cache.select(index, room=n), context.last_hidden.index_select(0, index)
        else:
            hs, cache = self.net(context.ids.index_select(0, index), context.valid.index_select(0, index))
            cache, h = cache.select(torch.arange(len(index), device=self.device), room=n), hs[:, -1]
        runs = generator_runs(generator, b, num_samples)
        head = self.net.gen_head
        keys = head.keys(self.net.code_pixels)  # what image_head computes at every token, once per image
        tokens = torch.zeros(r_rows, n, dtype=torch.long, device=self.device)
        hidden = torch.zeros(r_rows, n, 2, self.hidden_size, dtype=self.dtype, device=self.device) if return_hidden else None
        for i in range(n):
            hc, hu = h[:r_rows], h[r_rows:]
            if i < forced_len:
                tok = forced[:, i]
            else:
                logits = fuse_cfg(head.logits(hc, keys), head.logits(hu, keys), w).float()
                if temp <= 0:
                    tok = logits.argmax(-1)
                else:
                    # x / 1.0 == x exactly: skipping it saves a pass over every row's logits
                    probs = torch.softmax(logits if temp == 1.0 else logits / temp, dim=-1)
                    tok = multinomial_rows(probs, runs)
            tokens[:, i] = tok
            if hidden is not None:
                hidden[:, i, 0] = hc
                hidden[:, i, 1] = hu
            if i == n - 1:
                break
            step = (tok + self.net.gen_offset).repeat(2)[:, None]
            hs, cache = self.net(step, None, cache)
            h = hs[:, -1]
        self.counter.add_image(2 * r_rows * n)
        return ImageResult(tokens=tokens.cpu(), hidden=hidden, cfg=w, temperature=temp)

    def decode_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(tokens)

    # -- many prompts in one batch ---------------------------------------------------------------
    batches_prompts = True

    def merge_rows(self, parts: list[Union[PromptState, ImageContext]]) -> Union[PromptState, ImageContext]:
        """Prompt states or image contexts as one, left-padded (see ``MUGModel.merge_rows``)."""
        if all(isinstance(p, PromptState) for p in parts):
            ids, valid, cache, last = _gather(parts, torch.arange(sum(len(p.prompts) for p in parts), device=self.device))
            return PromptState([q for p in parts for q in p.prompts], ids, valid, cache, last)
        if not all(isinstance(p, ImageContext) for p in parts):
            raise TypeError("merge_rows needs all prompt states (encode_prompts) or all image contexts (image_context)")
        # Each context holds its cond rows, then its uncond rows; the merged one all cond rows first.
        cond, uncond, offset = [], [], 0
        for p in parts:
            b = p.batch_size
            cond.append(torch.arange(offset, offset + b))
            uncond.append(torch.arange(offset + b, offset + 2 * b))
            offset += 2 * b
        ids, valid, cache, last = _gather(parts, torch.cat(cond + uncond).to(self.device))
        plans = None if any(p.plans is None for p in parts) else [q for p in parts for q in p.plans]
        return ImageContext([q for p in parts for q in p.prompts], plans, ids, valid, cache, last)

    def split_rows(self, batch: Union[PromptState, ImageContext], rows: list[int]) -> list[Union[PromptState, ImageContext]]:
        """Consecutive blocks of ``rows`` prompts of a state or context, padding trimmed."""
        if sum(rows) != len(batch.prompts):
            raise ValueError(f"split_rows: {sum(rows)} rows asked of a batch of {len(batch.prompts)} prompts")
        out, start, b = [], 0, len(batch.prompts)
        for r in rows:
            if isinstance(batch, ImageContext):
                index = torch.cat([torch.arange(start, start + r), torch.arange(b + start, b + start + r)])
                ids, valid, cache, last = _gather([batch], index.to(self.device))
                plans = None if batch.plans is None else batch.plans[start:start + r]
                out.append(ImageContext(batch.prompts[start:start + r], plans, ids, valid, cache, last))
            else:
                ids, valid, cache, last = _gather([batch], torch.arange(start, start + r, device=self.device))
                out.append(PromptState(batch.prompts[start:start + r], ids, valid, cache, last))
            start += r
        return out

    # -- understanding -------------------------------------------------------------------------
    @torch.no_grad()
    def yes_probability(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        if isinstance(questions, str):
            raise ValueError("questions must be a list of strings, one per image")
        codes = self.tokenizer.encode(images)
        if codes.shape[0] != len(questions):
            raise ValueError(f"{codes.shape[0]} images for {len(questions)} questions")
        return self.yes_probability_codes(codes, questions)

    @torch.no_grad()
    def yes_probability_codes(self, codes: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """``yes_probability`` from image codes ``[B, 64]`` (skips the tokenizer)."""
        off = self.net.und_offset
        rows = [[BOS, IMG] + (c + off).tolist() + [Q] + self.text_ids(q) + [ANS] for c, q in zip(codes.long().cpu(), questions)]
        ids, valid = _left_pad(rows, self.device)
        h, _ = self.net(ids, valid)
        logits = self.text_head(h[:, -1]).float()
        return torch.sigmoid(logits[:, self.yes_id] - logits[:, self.no_id]).cpu()


def _default_words() -> list[str]:
    """The world's vocabulary (sorted) plus the answers."""
    from milr.world import VOCAB

    words = [w for w in sorted(set(VOCAB)) if w not in SPECIALS]
    for w in ("yes", "no"):
        if w not in words:
            words.append(w)
    return words
