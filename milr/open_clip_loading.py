"""open_clip models loaded offline: one loader for every critic and trainer that uses CLIP.

``clip_score``, the detector's colour classifier, GenEval's segmenter colours, the trained
critics' open_clip backbone and contrastive training all load through :func:`load_open_clip` and
feed pixels through :func:`preprocess_tensor` (open_clip's eval transform, differentiable). A
pretrained tag is resolved to the file open_clip would download and looked up in the local caches
(Hugging Face hub cache, or open_clip's ``~/.cache/clip`` for URL weights); if it is not there the
loader fails at once, saying what to download and how to point the recipe at the local file. The
model itself is then built with the hub forced offline (:func:`milr.hub.hub_offline`).
Reference: open_clip (github.com/mlfoundations/open_clip), Radford et al. 2021 (arXiv 2103.00020).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from milr.devices import open_clip_precision
from milr.hub import cached_file, hub_offline


class WeightsNotFoundError(FileNotFoundError):
    """A named checkpoint is not available locally (the toolkit never downloads at score time)."""


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
