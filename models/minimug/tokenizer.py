"""MiniMUG's image tokenizer: 4x4 RGB patches quantised by a k-means codebook.

Plays the role of Janus-Pro's VQ tokenizer (Chen et al. 2025, arXiv 2501.17811; itself after
LlamaGen's VQGAN): an image becomes a grid of discrete codes (32x32 pixels, 4x4 patches, an 8x8
grid of 64 codes) and decodes back to pixels. Instead of a learned encoder/decoder network it is a
vector quantiser learned directly on pixel patches (k-means, Lloyd 1982), which is honest for a
flat-colour procedural world: the world's images hold only a few thousand distinct 4x4 patches
(see ``docs/minimug-feasibility.md``), so a codebook of about 1024 centroids keeps the exact
scorer's verdict on nearly every image.

Encoding is an exact lookup table from every patch seen while fitting to its centroid, with a
nearest-centroid search for unseen patches; decoding pastes the centroid patches (rounded to
uint8) back into place.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

PATCH = 4
IMAGE_SIZE = 32
GRID = IMAGE_SIZE // PATCH
NUM_TOKENS = GRID * GRID
PATCH_DIM = PATCH * PATCH * 3

ImageLike = Union[np.ndarray, torch.Tensor]


def to_uint8_hwc(images: ImageLike) -> np.ndarray:
    """Accept uint8 ``[B, H, W, 3]`` (numpy or torch) or float ``[B, 3, H, W]`` in [0, 1]."""
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dtype == torch.uint8:
            arr = t.numpy()
        else:
            if t.dim() != 4 or t.shape[1] != 3:
                raise ValueError(f"float images must be [B, 3, H, W] in [0, 1]; got shape {tuple(t.shape)}")
            arr = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            if arr.ndim == 4 and arr.shape[1] == 3:
                arr = np.transpose(arr, (0, 2, 3, 1))
            arr = np.clip(np.round(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(
            f"images must be {IMAGE_SIZE}x{IMAGE_SIZE} RGB: uint8 [B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] or "
            f"float [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}]; got shape {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr)


def image_patches(images: np.ndarray) -> np.ndarray:
    """uint8 ``[B, 32, 32, 3]`` -> ``[B, 64, 48]`` patches in raster order of the 8x8 grid."""
    b = images.shape[0]
    p = images.reshape(b, GRID, PATCH, GRID, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(p.reshape(b, NUM_TOKENS, PATCH_DIM))


def _void_view(flat: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(flat, dtype=np.uint8)
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


class PatchTokenizer:
    """k-means codebook over 4x4 patches with an exact-patch lookup table.

    ``codebook``: float32 ``[K, 48]`` centroids in 0..255. ``known_patches``: uint8 ``[M, 48]``
    patches seen while fitting, ``known_codes``: int64 ``[M]`` their centroid.
    """

    def __init__(self, codebook: np.ndarray, known_patches: np.ndarray | None = None, known_codes: np.ndarray | None = None):
        codebook = np.asarray(codebook, dtype=np.float32)
        if codebook.ndim != 2 or codebook.shape[1] != PATCH_DIM:
            raise ValueError(f"codebook must be [K, {PATCH_DIM}]; got {codebook.shape}")
        self.codebook = codebook
        self.codebook_size = codebook.shape[0]
        self._decode_table = np.clip(np.round(codebook), 0, 255).astype(np.uint8)
        self._cb_t = torch.from_numpy(codebook)
        if known_patches is None:
            known_patches = np.zeros((0, PATCH_DIM), np.uint8)
            known_codes = np.zeros((0,), np.int64)
        self.known_patches = np.ascontiguousarray(known_patches, dtype=np.uint8)
        self.known_codes = np.asarray(known_codes, dtype=np.int64)
        if self.known_codes.shape[0] != self.known_patches.shape[0]:
            raise ValueError("known_patches and known_codes differ in length")
        if self.known_codes.size and (self.known_codes.min() < 0 or self.known_codes.max() >= self.codebook_size):
            raise ValueError("known_codes out of codebook range")
        self._table = {v.tobytes(): int(c) for v, c in zip(_void_view(self.known_patches), self.known_codes)} if self.known_patches.size else {}

    # -- fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, images: ImageLike, codebook_size: int = 1024, iters: int = 30, weight_power: float = 0.5) -> "PatchTokenizer":
        """Fit the codebook on images (uint8 ``[N, 32, 32, 3]``).

        Distinct patches are clustered with weights ``count ** weight_power`` (default: square
        root): the rare patches are the edges of shapes, which decide the shape class, so plain
        frequency weighting (power 1) would merge them away.
        If there are no more distinct patches than codes, every patch gets its own code.
        """
        if codebook_size < 2:
            raise ValueError("codebook_size must be at least 2")
        arr = to_uint8_hwc(images)
        flat = image_patches(arr).reshape(-1, PATCH_DIM)
        uniq_v, counts = np.unique(_void_view(flat), return_counts=True)
        uniq = np.frombuffer(uniq_v.tobytes(), dtype=np.uint8).reshape(-1, PATCH_DIM)
        m = uniq.shape[0]
        order = np.argsort(-counts, kind="stable")
        uniq, counts = uniq[order], counts[order]
        if m <= codebook_size:
            codebook = np.concatenate([uniq, np.repeat(uniq[:1], codebook_size - m, axis=0)]).astype(np.float32)
            return cls(codebook, uniq, np.arange(m))
        x = torch.from_numpy(uniq.astype(np.float32))
        w = torch.from_numpy(np.power(counts.astype(np.float64), weight_power).astype(np.float32))
        # Deterministic init: the most frequent patches (flat colours, common edges) are exact codes.
        cent = x[:codebook_size].clone()
        for _ in range(iters):
            assign = torch.cdist(x, cent).argmin(1)
            sums = torch.zeros_like(cent).index_add_(0, assign, x * w[:, None])
            wsum = torch.zeros(codebook_size).index_add_(0, assign, w)
            empty = wsum == 0
            cent = torch.where(empty[:, None], cent, sums / wsum.clamp_min(1e-8)[:, None])
            if empty.any():  # reseed empty clusters on the worst-represented patches
                err = (x - cent[assign]).pow(2).sum(1) * w
                worst = torch.topk(err, int(empty.sum())).indices
                cent[empty.nonzero().squeeze(1)] = x[worst]
        assign = torch.cdist(x, cent).argmin(1)
        return cls(cent.numpy(), uniq, assign.numpy())

    @classmethod
    def random(cls, codebook_size: int = 64, seed: int = 0) -> "PatchTokenizer":
        """A random codebook (for tests of the model's plumbing; not a useful tokenizer)."""
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, 256, (codebook_size, PATCH_DIM)).astype(np.float32))

    # -- use ---------------------------------------------------------------------------------
    def encode(self, images: ImageLike) -> torch.Tensor:
        """Images to codes ``LongTensor[B, 64]`` (8x8 grid, raster order)."""
        arr = to_uint8_hwc(images)
        flat = image_patches(arr).reshape(-1, PATCH_DIM)
        uniq_v, inverse = np.unique(_void_view(flat), return_inverse=True)
        codes_u = np.fromiter((self._table.get(v.tobytes(), -1) for v in uniq_v), dtype=np.int64, count=len(uniq_v))
        missing = codes_u < 0
        if missing.any():
            miss = np.frombuffer(uniq_v[missing].tobytes(), dtype=np.uint8).reshape(-1, PATCH_DIM)
            codes_u[missing] = torch.cdist(torch.from_numpy(miss.astype(np.float32)), self._cb_t).argmin(1).numpy()
        return torch.from_numpy(codes_u[inverse.ravel()].reshape(arr.shape[0], NUM_TOKENS))

    def decode_uint8(self, codes: torch.Tensor) -> np.ndarray:
        """Codes ``[B, 64]`` to uint8 images ``[B, 32, 32, 3]``."""
        c = torch.as_tensor(codes).detach().cpu().long()
        if c.dim() != 2 or c.shape[1] != NUM_TOKENS:
            raise ValueError(f"codes must be [B, {NUM_TOKENS}]; got {tuple(c.shape)}")
        if c.numel() and (c.min() < 0 or c.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}); got [{int(c.min())}, {int(c.max())}]")
        p = self._decode_table[c.numpy()].reshape(-1, GRID, GRID, PATCH, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(p.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 3))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, 64]`` to float images ``[B, 3, 32, 32]`` in [0, 1]."""
        return torch.from_numpy(self.decode_uint8(codes)).permute(0, 3, 1, 2).float() / 255.0

    def round_trip(self, images: ImageLike) -> np.ndarray:
        """encode -> decode, as uint8 ``[B, 32, 32, 3]``."""
        return self.decode_uint8(self.encode(images))

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self, prefix: str = "tokenizer.") -> dict[str, torch.Tensor]:
        return {
            prefix + "codebook": torch.from_numpy(self.codebook.copy()),
            prefix + "known_patches": torch.from_numpy(self.known_patches.copy()),
            prefix + "known_codes": torch.from_numpy(self.known_codes.copy()),
        }

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "tokenizer.") -> "PatchTokenizer":
        try:
            return cls(
                sd[prefix + "codebook"].float().numpy(),
                sd[prefix + "known_patches"].to(torch.uint8).numpy(),
                sd[prefix + "known_codes"].long().numpy(),
            )
        except KeyError as e:
            raise KeyError(f"tokenizer tensor {e} missing from the weights (expected keys {prefix}codebook, "
                           f"{prefix}known_patches, {prefix}known_codes)") from None
