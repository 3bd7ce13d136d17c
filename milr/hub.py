"""Weights from the Hugging Face hub, offline: one home for the cache lookups every loader makes.

milr never downloads at score time: a loader resolves a hub name to files already in the local
cache (:func:`cached_file`) and fails at once with a message saying what to download when they are
missing; whether the hub may be asked at all is :func:`is_offline` (``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE``). :func:`hub_offline` forces huggingface_hub offline while a library
loads files already resolved, so a stray lookup fails in milliseconds instead of retrying.
:func:`module_fingerprint` is a network's weights identity (part of critics' cache keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    import torch

_TRUTHY = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """Whether the hub must not be asked (the environment variables, or huggingface_hub's flag)."""
    if any(os.environ.get(v, "").lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - no or a very old huggingface_hub
        return False


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Force huggingface_hub offline for the duration (its flag is read once at import).

    Everything loaded inside has been resolved to local files first, so a stray hub lookup (e.g. a
    tokenizer config) fails in milliseconds instead of retrying for tens of seconds.
    """
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - open_clip and transformers depend on huggingface_hub
        yield
        return
    old = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def cached_file(repo_id: str, filename: str, cache_dir: Optional[str] = None, revision: Optional[str] = None) -> Optional[str]:
    """The local path of ``filename`` of hub repo ``repo_id`` when it is in the cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=cache_dir, revision=revision)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def module_fingerprint(module: "torch.nn.Module") -> str:
    """sha256 over a module's parameters and buffers (names, shapes, bytes): the weights' identity."""
    import torch

    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


__all__ = ["is_offline", "hub_offline", "cached_file", "module_fingerprint"]
