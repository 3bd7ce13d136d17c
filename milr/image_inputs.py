"""Images for critics from what users hold: tensors, PIL images, file paths or a folder.

Critics score float tensors ``[B, 3, H, W]`` in [0, 1]; :func:`image_batch` turns any of the
inputs pyiqa's metrics accept (``metric(img_path)`` or a tensor; Chen et al., github.com/chaofengc/
IQA-PyTorch) into one, so ``critic.score_images("photo.png", "a red circle")`` and
``critic.score_images(folder, prompts)`` work like ``critic.score(tensor, prompts)``. Files are
decoded as 8-bit RGB and divided by 255, exactly what a tensor made from the same pixels holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from milr.errors import UserError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _is_pil(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode")


def folder_images(folder: Union[str, os.PathLike]) -> list[Path]:
    """The image files of a folder (not recursive), sorted by name."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def _one(x: Any) -> "torch.Tensor":
    """One image as float ``[3, H, W]`` in [0, 1]."""
    import numpy as np
    import torch

    if isinstance(x, (str, os.PathLike)):
        from PIL import Image

        p = Path(x)
        if not p.is_file():
            raise UserError(f"image {p} does not exist")
        with Image.open(p) as im:
            x = im.convert("RGB")
    if _is_pil(x):
        x = torch.from_numpy(np.asarray(x.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x.copy()).permute(2, 0, 1) if x.ndim == 3 and x.shape[-1] in (1, 3) else torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise UserError(f"cannot read an image from a {type(x).__name__}; give a tensor, PIL image, numpy array or file path")
    if x.dtype == torch.uint8:
        x = x.float().div(255.0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise UserError(f"an image tensor must be [3, H, W] (or [B, 3, H, W] for a batch), got shape {tuple(x.shape)}")
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def image_batch(images: Any, size: Optional[int] = None) -> "torch.Tensor":
    """Float ``[B, 3, H, W]`` in [0, 1] from a tensor (``[B,3,H,W]`` or ``[3,H,W]``, float or uint8),
    PIL image, numpy array, file path, folder, or a list of these.

    Images of different sizes are resized (bilinear, antialiased) to ``size`` when given, else to the
    first image's size; a batch of equal sizes is returned as it is (gradients flow through tensors).
    """
    import torch
    import torch.nn.functional as F

    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return images.float().div(255.0) if images.dtype == torch.uint8 else images
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        images = folder_images(images)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise UserError("no images given")
    tensors = [_one(x) for x in items]
    target = (size, size) if size else tuple(tensors[0].shape[-2:])
    tensors = [t if tuple(t.shape[-2:]) == target else
               F.interpolate(t[None], size=target, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
               for t in tensors]
    return torch.stack(tensors)


def uint8_hwc(images: "torch.Tensor") -> "Any":
    """``uint8 [B, H, W, 3]`` numpy pixels of float ``[B, 3, H, W]`` images in [0, 1] (rounded, as
    an 8-bit file would hold them): what detectors and OpenCV-style pipelines read."""
    import torch

    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def prompt_list(prompts: Union[str, Sequence[str]], n: int) -> list[str]:
    """One prompt per image: a single string is repeated."""
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise UserError(f"{n} images but {len(prompts)} prompts; give one prompt per image or a single prompt")
    return prompts


__all__ = ["image_batch", "prompt_list", "folder_images", "check_batch"]


def check_batch(images: "torch.Tensor", prompts: Sequence[str], who: str) -> None:
    """A critic's inputs: ``images`` a ``[B, 3, H, W]`` tensor with one prompt per image."""
    import torch

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{who}: images must be a [B, 3, H, W] tensor in [0, 1], got {shape}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{who}: {images.shape[0]} images but {len(prompts)} prompts")
