"""CLIP score critic on open_clip (any architecture; pretrained tag, local checkpoint or local config).

References: Radford et al. 2021 (CLIP, arXiv 2103.00020); Hessel et al. 2021, "CLIPScore: A
Reference-free Evaluation Metric for Image Captioning" (arXiv 2104.08718), which defines
``CLIP-S = w * max(cos, 0)`` with ``w = 2.5``; open_clip (github.com/mlfoundations/open_clip).
T2I-CompBench's non-spatial score is the raw cosine (``variant="cosine"``).

Loading (:func:`load_open_clip`, shared with the detector critic's colour classifier) never
touches the network: a pretrained tag is resolved to the file open_clip would download and looked
up in the local caches (Hugging Face hub cache, or open_clip's ``~/.cache/clip`` for URL weights);
if it is not there the loader fails at once, saying what to download and how to point the recipe
at the local file. The model itself is then built with the hub forced offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F

from milr.argtypes import PositiveInt
from milr.devices import DType, open_clip_precision, torch_dtype
from milr.hub import cached_file, hub_offline, module_fingerprint
from milr.image_inputs import check_batch
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

# Bump when the scoring code changes in a way that changes scores (part of the cache key).
VERSION = "1"

class WeightsNotFoundError(FileNotFoundError):
    """A named checkpoint is not available locally (the toolkit never downloads at score time)."""


# ---------------------------------------------------------------------------------------------
# Offline loading
# ---------------------------------------------------------------------------------------------
def _resolve_tag(arch: str, tag: str, cache_dir: Optional[str]) -> tuple[str, dict]:
    """Local file for open_clip's pretrained ``tag`` of ``arch``, or :class:`WeightsNotFoundError`."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(
            f"pretrained={tag!r} is neither a local file nor a pretrained tag of open_clip architecture "
            f"{arch!r}; known tags: {known or 'none'}"
        )
    if cfg.get("file"):
        return cfg["file"], cfg
    looked: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            path = cached_file(repo_id, name, cache_dir)
            if path:
                return path, cfg
        looked.append(f"the Hugging Face cache for repo {repo_id!r} (files {candidates})")
        how = (
            f"`huggingface-cli download {repo_id} {candidates[-1]}` on a machine with network "
            f"(then copy the HF cache, or the file itself)"
        )
    url = cfg.get("url", "")
    if url:
        clip_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        path = os.path.join(clip_cache, os.path.basename(url))
        if os.path.isfile(path):
            return path, cfg
        looked.append(path)
        if not hub:
            how = f"{url} on a machine with network"
    raise WeightsNotFoundError(
        f"open_clip weights {arch}/{tag} are not available offline (looked in {'; '.join(looked)}). "
        f"Download {how}, then point the recipe at the local file: `pretrained: /path/to/weights` "
        f"(any open_clip state dict, .pt/.bin/.safetensors)."
    )


def _resolve_hf_hub_model(repo_id: str, cache_dir: Optional[str]) -> str:
    """``hf-hub:org/repo`` -> ``local-dir:<cached snapshot>`` when config and weights are cached."""
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    config = cached_file(repo_id, HF_CONFIG_NAME, cache_dir)
    weights = cached_file(repo_id, HF_SAFE_WEIGHTS_NAME, cache_dir) or cached_file(repo_id, HF_WEIGHTS_NAME, cache_dir)
    if config and weights and Path(config).parent == Path(weights).parent:
        return "local-dir:" + str(Path(config).parent)
    raise WeightsNotFoundError(
        f"open_clip model hf-hub:{repo_id} is not in the local Hugging Face cache (need {HF_CONFIG_NAME} and "
        f"{HF_SAFE_WEIGHTS_NAME} or {HF_WEIGHTS_NAME}). Download it with `huggingface-cli download {repo_id}` on a "
        f"machine with network, or point the recipe at a local folder: `arch: /path/to/folder` (holding "
        f"{HF_CONFIG_NAME} and the weights)."
    )


def _register_config_file(path: Path) -> str:
    """Register a local open_clip model-config JSON; returns the architecture name to build.

    Accepts a bare model config (``embed_dim``, ``vision_cfg``, ``text_cfg``), registered under the
    file's stem as ``open_clip.add_model_config`` does.
    """
    import open_clip

    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read open_clip model config {path}: {e}") from e
    if "model_cfg" in cfg:  # an hf-hub style open_clip_config.json: use its folder
        return "local-dir:" + str(path.parent)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"{path} is not an open_clip model config: missing keys {missing}")
    open_clip.add_model_config(path)
    return path.stem


def load_open_clip(
    arch: str,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: DType = "float32",
    cache_dir: Optional[str] = None,
) -> tuple[torch.nn.Module, Any, dict]:
    """Build an open_clip model and tokenizer from local files only.

    ``arch``: a built-in architecture name (``"ViT-L-14"``), a path to a model-config JSON, a folder
    holding ``open_clip_config.json`` and weights, or ``hf-hub:org/repo`` (must be cached).
    ``pretrained``: ``None`` (random weights), a local checkpoint path, or a pretrained tag (must be
    cached). Returns ``(model in eval mode, tokenizer, preprocess cfg)``.
    """
    import open_clip

    precision = open_clip_precision(dtype)
    arch = str(arch)
    kwargs: dict[str, Any] = {}
    name = arch
    if arch.startswith("hf-hub:"):
        name = _resolve_hf_hub_model(arch[len("hf-hub:") :], cache_dir)
        pretrained = None
    elif arch.startswith("local-dir:"):
        pretrained = None
    elif arch.endswith(".json") or os.path.sep in arch or os.path.exists(arch):
        path = Path(arch).expanduser()
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"folder {path} has no open_clip_config.json")
            name = "local-dir:" + str(path)
            pretrained = None
        elif path.is_file():
            name = _register_config_file(path)
        else:
            raise FileNotFoundError(f"open_clip model config {path} does not exist")
    elif arch not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {arch!r}; give a built-in name (open_clip.list_models()), a path to a "
            f"model-config JSON, or a local folder"
        )

    tag_cfg: dict = {}
    if pretrained is not None:
        pretrained = str(pretrained)
        if os.path.isfile(os.path.expanduser(pretrained)):
            pretrained = os.path.expanduser(pretrained)
        elif os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise FileNotFoundError(f"open_clip checkpoint {pretrained} does not exist")
        else:
            pretrained, tag_cfg = _resolve_tag(name, pretrained, cache_dir)
            if tag_cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True  # e.g. OpenAI weights were trained with QuickGELU
            pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
            if pp:
                kwargs["force_preprocess_cfg"] = pp

    with hub_offline():
        model = open_clip.create_model(name, pretrained=pretrained, precision=precision, device=device, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    pp_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
    return model, tokenizer, pp_cfg


def preprocess_tensor(images: torch.Tensor, pp_cfg: dict) -> torch.Tensor:
    """open_clip's eval transform on ``[B, 3, H, W]`` in [0, 1], differentiable.

    Resize the shortest side to the model size (bicubic, antialiased when shrinking), centre-crop,
    normalise with the model's mean/std. (open_clip resizes PIL images; results agree to
    interpolation details.)
    """
    size = pp_cfg.get("size", 224)
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    h, w = images.shape[-2:]
    mode = pp_cfg.get("resize_mode", "shortest")
    interp = pp_cfg.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear", "nearest"):
        interp = "bicubic"
    if mode == "squash":
        nh, nw = th, tw
    elif mode == "longest":  # fit inside the target, then pad
        scale = min(th / h, tw / w)
        nh, nw = min(th, round(h * scale)), min(tw, round(w * scale))
    else:  # "shortest": cover the target, then centre-crop
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = images
    if (nh, nw) != (h, w):
        x = F.interpolate(
            x, size=(nh, nw), mode=interp, align_corners=False if interp != "nearest" else None,
            antialias=interp != "nearest" and (nh < h or nw < w),
        )
    if mode == "longest":  # pad to the target (open_clip pads with 0)
        x = F.pad(x, (0, tw - nw, 0, th - nh))
    top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
    x = x[..., top : top + th, left : left + tw].clamp(0, 1)
    mean = torch.tensor(pp_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=x.dtype, device=x.device)
    std = torch.tensor(pp_cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=x.dtype, device=x.device)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


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
        if variant not in ("cosine", "clipscore"):
            raise ValueError(f"clip_score: variant must be 'cosine' or 'clipscore', got {variant!r}")
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
