"""Key/value caches for the Janus-Pro adapter: a preallocated buffer, prompt prefixes, left-pad merging.

References:

* transformers (>= 4.56) ``cache_utils``: a ``Cache`` is a list of per-layer objects with
  ``update(keys, values) -> (all keys, all values)``, ``get_seq_length()`` and
  ``get_mask_sizes(query_length)``. ``DynamicLayer`` grows with ``torch.cat`` at every token, which
  copies the whole cache each step (quadratic traffic over an image: 576 steps); ``StaticLayer``
  preallocates ``max_cache_len`` but then attends over every slot, masked or not.
* ``BufferLayer`` (``models/janus_buffer.py``) preallocates like ``StaticLayer`` and returns views of the filled part
  like ``DynamicLayer``: the attention sees exactly the tensors ``DynamicCache`` would give it (same
  shapes, same values; only the storage stride differs), so tokens equal the dynamic path while no
  step copies the cache. Measured on this CPU in issue 12: x1.36 at 64 prompts, identical tokens.

Left-pad merging (:func:`merge_prefixes`) puts prompts encoded separately, of different lengths, into
one batch: keys/values are padded on the left with zeros and the attention mask marks the pads, as
a tokenizer's left padding would (positions come from the mask, so a pad shifts nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class Prefix:
    """Prompt rows encoded once: their KV, the state after the last token, mask and next positions."""

    input_ids: torch.Tensor  # [rows, S], left padded
    attention_mask: torch.Tensor  # [rows, S]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [rows, heads, S, head_dim] each
    last_hidden: torch.Tensor  # [rows, H], predicts the first new token
    next_position: torch.Tensor  # [rows], position id of the first new token

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a transformers cache, ``[rows, heads, seq, head_dim]`` each."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # older 4.5x


def static_supported() -> bool:
    """Per-layer cache objects (what :class:`~milr.models.janus_buffer.BufferLayer` plugs into)
    exist since transformers 4.56."""
    try:
        from transformers.cache_utils import DynamicLayer  # noqa: F401
    except ImportError:  # pragma: no cover - transformers 4.5x before 4.56: dynamic caches only
        return False
    return True


def new_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, capacity: Optional[int] = None) -> Any:
    """A fresh cache holding ``kv`` restricted (and repeated) to ``rows``.

    ``capacity`` (total positions, prefix included): a preallocated :class:`BufferLayer` cache;
    ``None``: a ``DynamicCache`` (``index_select`` copies, so the stored prefix is never mutated).
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    if capacity is None:
        for i, (k, v) in enumerate(kv):
            cache.update(k.index_select(0, rows), v.index_select(0, rows), i)
        return cache
    from milr.models.janus_buffer import BufferLayer  # imports transformers: only when a cache is built

    cache.layers = [BufferLayer(k.index_select(0, rows), v.index_select(0, rows), capacity) for k, v in kv]
    return cache


def left_pad(x: torch.Tensor, length: int, dim: int, value: float = 0) -> torch.Tensor:
    """``x`` padded on the left along ``dim`` to ``length`` with ``value``."""
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x.new_full(shape, value), x], dim=dim)


def merge_prefixes(prefixes: list[Prefix], pad_id: int) -> Prefix:
    """Rows of several prefixes in one batch (in order), left padded to the longest.

    Padded key/value slots are zeros behind a zero attention mask; ``next_position`` is unchanged,
    so each row continues exactly where it would alone (up to the rounding of a longer reduction).
    """
    if len(prefixes) == 1:
        return prefixes[0]
    s = max(p.length for p in prefixes)
    layers = len(prefixes[0].kv)
    kv = [
        (
            torch.cat([left_pad(p.kv[i][0], s, 2) for p in prefixes]),
            torch.cat([left_pad(p.kv[i][1], s, 2) for p in prefixes]),
        )
        for i in range(layers)
    ]
    return Prefix(
        input_ids=torch.cat([left_pad(p.input_ids, s, 1, pad_id) for p in prefixes]),
        attention_mask=torch.cat([left_pad(p.attention_mask, s, 1, 0) for p in prefixes]),
        kv=kv,
        last_hidden=torch.cat([p.last_hidden for p in prefixes]),
        next_position=torch.cat([p.next_position for p in prefixes]),
    )


def select_prefix(prefix: Prefix, rows: torch.Tensor) -> Prefix:
    """The prefix restricted to ``rows``, with left padding every kept row shares trimmed away."""
    mask = prefix.attention_mask.index_select(0, rows)
    real = mask.any(0).nonzero()
    start = int(real[0]) if real.numel() else 0
    return Prefix(
        input_ids=prefix.input_ids.index_select(0, rows)[:, start:],
        attention_mask=mask[:, start:],
        kv=[(k.index_select(0, rows)[:, :, start:], v.index_select(0, rows)[:, :, start:]) for k, v in prefix.kv],
        last_hidden=prefix.last_hidden.index_select(0, rows),
        next_position=prefix.next_position.index_select(0, rows),
    )


def grow(mask: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """The attention mask after ``n`` more (real) tokens; ``None`` stays ``None`` (no padding)."""
    return None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], n)], dim=1)
