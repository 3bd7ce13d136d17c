"""The colours of MiniMUG's world and how a pixel is read back as one of them.

Seven of GenEval's colour names (Ghosh et al. 2023, arXiv 2310.11513, github.com/djghosh13/geneval)
with RGB values chosen far from each other and from the white background, and the per-pixel reading
the exact scorer (:mod:`milr.world.scorer`) and the detector's dataset writer share: a pixel is a
blend of one colour with white, and belongs to that colour when the colour covers at least half of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BACKGROUND: tuple[int, int, int] = (255, 255, 255)
# GenEval colour names. Values are >= 85 apart (RGB Euclidean) and >= 250 from white; every blend
# of a colour with white is nearer that colour or white than any other colour (checked in
# tests), so anti-aliased or decoded edge pixels never read as a third colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 0),
    "yellow": (240, 215, 0),
    "green": (20, 150, 40),
    "blue": (30, 70, 220),
    "purple": (130, 40, 170),
    "black": (20, 20, 20),
}
COLOR_NAMES: list[str] = list(COLORS)
# Row 0 is the background; row i >= 1 is COLOR_NAMES[i - 1].
PALETTE = np.array([BACKGROUND] + [COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
_WHITE = np.array(BACKGROUND, dtype=np.float32)
_DIRS = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32) - _WHITE  # white -> colour
_DIR_SQ = (_DIRS**2).sum(-1)
COLOR_CUT = 60.0  # RGB distance from a colour's white-blend line; the lines are >= 76 apart


def as_uint8_image(image: Any) -> np.ndarray:
    """Accept ``uint8 [H, W, 3]``, float ``[H, W, 3]`` in [0, 1], or either as ``[3, H, W]``."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"expected one image [H, W, 3] or [3, H, W], got shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return arr


def palette_labels(image: Any) -> np.ndarray:
    """Per-pixel palette index ``[H, W]``: 0 background, i >= 1 colour ``COLOR_NAMES[i-1]``.

    Each pixel is explained as a blend ``alpha * colour + (1 - alpha) * white`` of the colour whose
    white-blend line passes closest to it; it belongs to that colour when the colour covers at
    least half of it (``alpha >= 0.5``) and the line is within ``COLOR_CUT``. Soft (anti-aliased,
    blurred or decoded) edges are thereby cut at half coverage instead of being eroded, and a
    blend of a colour with white is never read as another colour (lines are >= 76 apart).
    """
    img = as_uint8_image(image).astype(np.float32)
    p = img - _WHITE  # [H, W, 3]
    pd = p @ _DIRS.T  # [H, W, C]
    alpha = np.clip(pd / _DIR_SQ, 0.0, 1.0)
    # squared distance to the closest point of each line: |p - alpha d|^2, expanded
    resid2 = (p * p).sum(-1, keepdims=True) - 2 * alpha * pd + alpha * alpha * _DIR_SQ
    k = resid2.argmin(-1)
    a = np.take_along_axis(alpha, k[..., None], -1)[..., 0]
    r2 = np.take_along_axis(resid2, k[..., None], -1)[..., 0]
    return np.where((a >= 0.5) & (r2 <= COLOR_CUT**2), k + 1, 0)


__all__ = ["BACKGROUND", "COLORS", "COLOR_CUT", "COLOR_NAMES", "PALETTE", "as_uint8_image", "palette_labels"]
