"""A key/value cache layer preallocated for a whole decoding call, for the Janus-Pro adapter.

Reference: transformers (>= 4.56) ``cache_utils.DynamicLayer``, whose ``update`` returns the layer's
keys and values after appending the new positions with ``torch.cat``, a copy of the whole cache at
every token. This layer allocates the buffer once (prompt prefix plus the positions the call will
add) and writes each step in place; ``keys``/``values`` are views of the filled part, so attention
sees the same tensors as with ``DynamicLayer`` (see ``models/janus_cache.py`` for its use).
Its own module because it subclasses a transformers class: importing it imports transformers.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class BufferLayer(DynamicLayer):
    """One layer's keys and values in a buffer allocated once for ``capacity`` positions.

    ``update`` writes the new positions in place and exposes views ``[:, :, :length]`` as ``keys``
    and ``values``, so the attention input is ``DynamicLayer``'s without its per-token ``torch.cat``.
    """

    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        rows, heads, length, _ = keys.shape
        self._k = keys.new_empty(rows, heads, capacity, keys.shape[-1])
        self._v = values.new_empty(rows, heads, capacity, values.shape[-1])
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self.length = length
        self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[2]:
            raise RuntimeError(f"KV buffer full: {end} positions needed, {self._k.shape[2]} allocated")
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, *args, **kwargs) -> tuple[int, int]:
        # As DynamicLayer: the mask covers the filled positions plus the new queries.
        return self.length + query_length, 0
