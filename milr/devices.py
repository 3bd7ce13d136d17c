"""Device and dtype names: parsed in one place for every model, critic and trainer.

A recipe names precisions as strings (``float32``, ``bfloat16``, ``float16``; the short forms
``fp32``, ``bf16``, ``fp16`` and ``half`` are read too) and devices as ``cpu``, ``cuda``,
``cuda:N``, ``mps`` or ``auto`` (CUDA when available). Constructors annotate their ``dtype``
argument with :data:`DType`, so the recipe validator rejects a misspelt precision from the
signature before anything loads. torch is imported only when a function needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

if TYPE_CHECKING:
    import torch

DType = Literal["float32", "bfloat16", "float16"]
"""The precisions a recipe may name (a constructor's ``dtype`` annotation)."""

_CANONICAL = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
              "float16": "float16", "fp16": "float16", "half": "float16", "float64": "float64"}
# open_clip's ``precision`` argument for each dtype
_OPEN_CLIP = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_name(dtype: Any) -> str:
    """The canonical name (``float32``/``bfloat16``/``float16``/``float64``) of a name or torch dtype."""
    key = str(dtype).replace("torch.", "")
    if key not in _CANONICAL:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)")
    return _CANONICAL[key]


def torch_dtype(dtype: Any, device: Optional[Any] = None) -> "torch.dtype":
    """The torch dtype for a name; ``None``/``auto``: bfloat16 on CUDA, else float32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, dtype_name(dtype))


def open_clip_precision(dtype: Any) -> str:
    """open_clip's ``precision`` string (``fp32``, ``bf16``, ``fp16``) for a dtype name."""
    name = dtype_name(dtype)
    if name not in _OPEN_CLIP:
        raise ValueError(f"open_clip has no precision {name!r}; use float32, bfloat16 or float16")
    return _OPEN_CLIP[name]


def check_device(name: str, gpu_indices: bool = False) -> str:
    """``name`` if it is a device a config may name (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``;
    with ``gpu_indices``, ultralytics' names: ``auto`` is not one, GPU indices ``0,1`` are), else
    ValueError saying what is allowed."""
    import re

    pattern, allowed = r"cpu|cuda(:\d+)?|mps", "cpu, cuda, cuda:N, mps"
    pattern, allowed = (pattern + r"|\d+(,\d+)*", allowed + " or GPU indices such as 0,1") if gpu_indices else (pattern + "|auto", allowed + ", auto")
    if not re.fullmatch(pattern, str(name)):
        raise ValueError(f"found {name!r}; allowed: {allowed}")
    return name


def resolve_device(device: Optional[str], check: bool = False) -> str:
    """``auto`` (or ``None``) -> ``cuda`` when available, else ``cpu``; any other value as given.

    ``check``: a CUDA device asked for on a machine without CUDA is an error now, not at the
    first tensor moved."""
    if device not in (None, "auto") and not check:
        return str(device)
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device: cpu")
    return str(dev)


__all__ = ["DType", "dtype_name", "torch_dtype", "open_clip_precision", "check_device", "resolve_device"]
