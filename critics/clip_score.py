"""CLIP score critic on open_clip (any architecture; pretrained tag, local checkpoint or local config).

References: Radford et al. 2021 (CLIP, arXiv 2103.00020); Hessel et al. 2021, "CLIPScore: A
Reference-free Evaluation Metric for Image Captioning" (arXiv 2104.08718), which defines
``CLIP-S = w * max(cos, 0)`` with ``w = 2.5``; open_clip (github.com/mlfoundations/open_clip).
T2I-CompBench's non-spatial score is the raw cosine (``variant="cosine"``).

Loading is :mod:`milr.open_clip_loading` (shared with the detector, GenEval and the trainers): it
never touches the network, and a pretrained tag missing from the local caches fails at once,
saying what to download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from milr.argtypes import PositiveInt, check_choice
from milr.devices import DType, torch_dtype
from milr.hub import module_fingerprint
from milr.image_inputs import check_batch
from milr.interfaces import Critic, given_arg
# Loading lives in milr.open_clip_loading (shared with the detector, GenEval and the trainers);
# re-exported here, where callers have long imported it from.
from milr.open_clip_loading import WeightsNotFoundError, _resolve_tag, load_open_clip, preprocess_tensor  # noqa: F401
from milr.registry import CRITICS

# Bump when the scoring code changes in a way that changes scores (part of the cache key).
VERSION = "1"

# ---------------------------------------------------------------------------------------------
# The critic
# ---------------------------------------------------------------------------------------------
def _looks_like_path(value: str) -> bool:
    return os.path.sep in value or value.startswith("~") or value.endswith((".json", ".pt", ".pth", ".bin", ".safetensors"))


def _require_weights(arch: str, pretrained: Optional[str]) -> None:
    """A CLIP with random weights scores noise: only on request (``pretrained: random``)."""
    own_weights = arch.startswith(("hf-hub:", "local-dir:")) or Path(arch).expanduser().is_dir()
    if pretrained is None and not own_weights and not _looks_like_path(arch):
        import open_clip

        if arch not in open_clip.list_models():
            return  # an unknown architecture: the loader's message names it and what is allowed
    if pretrained is None and not own_weights:
        raise ValueError(
            f"clip_score: no weights for {arch!r}: give pretrained (a cached open_clip tag such as 'openai', or a "
            "local checkpoint path), a model folder as arch, or pretrained: random to score with random weights on purpose")


@CRITICS.register("clip_score")
class CLIPScore(Critic):
    """Image-text similarity of an open_clip model; higher is better.

    ``variant="cosine"``: cosine similarity in [-1, 1] (T2I-CompBench's CLIPScore).
    ``variant="clipscore"``: ``2.5 * max(cos, 0)`` in [0, 2.5] (Hessel et al. 2021).

    ``score`` runs under ``torch.no_grad`` unless ``requires_grad=True``; ``score_differentiable``
    always keeps the graph to the pixels (for gradient-based searches). Prompts longer than the
    model's context (77 tokens for CLIP) are truncated by the tokenizer; text embeddings are cached
    per prompt.

    The architecture argument is named ``arch`` (not ``model``) because the recipe runner passes
    the loaded MUG model to critics whose constructor has a ``model`` parameter.
    """

    def __init__(
        self,
        arch: str = "ViT-B-32",
        pretrained: Optional[str] = None,
        variant: Literal["cosine", "clipscore"] = "cosine",
        batch_size: PositiveInt = 32,
        requires_grad: bool = False,
        device: str = "cpu",
        dtype: DType = "float32",
        cache_dir: Optional[str] = None,
    ):
        check_choice("clip_score", "variant", variant, ("cosine", "clipscore"))
        _require_weights(str(arch), pretrained)
        pretrained = None if pretrained == "random" else pretrained
        if int(batch_size) < 1:
            raise ValueError(f"clip_score: batch_size must be >= 1, got {batch_size}")
        self.init_args = dict(arch=str(arch), pretrained=None if pretrained is None else str(pretrained),
                              variant=variant, dtype=dtype)
        self.variant = variant
        self.batch_size = int(batch_size)
        self.requires_grad = bool(requires_grad)
        self.device = torch.device(device)
        self.model, self.tokenizer, self.pp_cfg = load_open_clip(arch, pretrained, self.device, dtype, cache_dir)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = torch_dtype(dtype)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._fingerprint: Optional[str] = None

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the weights the recipe names without loading them (called before any load)."""
        arch, pretrained = str(given_arg(cls, args, "arch")), given_arg(cls, args, "pretrained")
        _require_weights(arch, pretrained)
        for what, value in (("arch", arch), ("pretrained", pretrained)):
            if value and _looks_like_path(str(value)) and not Path(str(value)).expanduser().exists():
                raise FileNotFoundError(f"{what}: {value} does not exist")

    # -- embeddings ----------------------------------------------------------------------------
    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, D]`` (cached per prompt)."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            for p, f in zip(chunk, feats):
                self._text_cache[p] = f
        return torch.stack([self._text_cache[p] for p in prompts])

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, D]``; differentiable when grad is enabled."""
        x = preprocess_tensor(images.to(self.device, torch.float32), self.pp_cfg).to(self.dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_batch(images, prompts, "clip_score")
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            img = self.image_features(images[i : i + self.batch_size])
            txt = self.text_features(prompts[i : i + self.batch_size])
            cos = (img * txt).sum(-1)
            out.append(2.5 * cos.clamp(min=0) if self.variant == "clipscore" else cos)
        return torch.cat(out).to(images.device)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> torch.Tensor:
        if self.requires_grad:
            return self._score(images, prompts)
        with torch.no_grad():
            return self._score(images, prompts)

    def score_differentiable(
        self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None
    ) -> torch.Tensor:
        """Like :meth:`score`, with the autograd graph to ``images`` kept."""
        with torch.enable_grad():
            return self._score(images, prompts)

    def identity(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.model)
        return f"clip_score:v{VERSION}:{sorted(self.init_args.items())!r}:w={self._fingerprint}"
