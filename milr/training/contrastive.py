"""Contrastive CLIP training (``task: contrastive``): an open_clip model fitted with the symmetric InfoNCE loss.

CLIP (Radford et al. 2021, arXiv 2103.00020; github.com/mlfoundations/open_clip) trained on
``{image, caption}`` rows; captions repeated inside a batch count as positives of each other. The
checkpoint is an open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) that
the ``clip_score`` critic loads as ``arch: <folder>`` and the ``trained`` critic as a path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from milr.critics.reward_net import open_clip_model_cfg

from milr.training.card import FORMAT, FORMAT_VERSION, save_state, write_card_files, zscore_from
from milr.training.data import CriticData
from milr.training.module import CriticModule, InfoNCELoss, fit, load_best, seed_everything, stats


def clip_from_config(m: dict) -> tuple[nn.Module, Any, dict, dict]:
    """Contrastive task: build the open_clip model to train; returns (model, tokenizer, pp_cfg, model_cfg)."""
    from milr.open_clip_loading import load_open_clip

    if m["clip_model"]:
        model, tok, pp = load_open_clip(m["clip_model"], m["clip_pretrained"])
        cfg = open_clip_model_cfg(str(m["clip_model"]))
        if cfg is None:  # a built-in architecture name
            import open_clip

            cfg = open_clip.get_model_config(str(m["clip_model"]))
        return model, tok, pp, copy.deepcopy(cfg)
    # An inline config: write it to a temporary file and load it through the same path.
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="milr-clip-")) / "inline-clip.json"
    tmp.write_text(json.dumps(m["open_clip_config"]))
    model, tok, pp = load_open_clip(str(tmp), m["clip_pretrained"])
    return model, tok, pp, copy.deepcopy(m["open_clip_config"])


def train_contrastive(cfg: dict, out: Path, resume: bool = False) -> Path:
    """Contrastive CLIP training; writes an open_clip folder plus critic.json/card.md."""
    seed_everything(cfg["train"]["seed"])
    data = CriticData(cfg)
    m = cfg["model"]
    model, tokenizer, pp, model_cfg = clip_from_config(m)
    if m["preprocess"]:
        pp = {**pp, **m["preprocess"]}
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()  # load_open_clip hands it over in eval mode
    t = cfg["train"]
    module = CriticModule(model, InfoNCELoss(pp), float(t["lr"]), float(t["weight_decay"]), int(t["epochs"]),
                          tokenizer=tokenizer)
    monitor = t["monitor"] or "val_loss"
    best, seconds = fit(cfg, data, module, out, monitor, resume)
    load_best(module, best)
    model.eval()
    pp_save = {k: v for k, v in pp.items() if k in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp_save}, indent=2))
    (out / f"{cfg['name']}.json").write_text(json.dumps(model_cfg, indent=2))
    save_state(model.state_dict(), out / "open_clip_model.safetensors", t["weights_dtype"])
    cal: dict = {}
    if data.val_rows:
        batch = data.batch(data.val_rows)
        from milr.open_clip_loading import preprocess_tensor

        with torch.no_grad():
            img = F.normalize(model.encode_image(preprocess_tensor(batch["image"], pp)).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokenizer(batch["prompt"])).float(), dim=-1)
        cos = (img * txt).sum(-1)
        cal = {"matched_cosine": stats(cos), "mismatched_cosine": stats((img @ txt.t())[~torch.eye(len(cos), dtype=torch.bool)])}
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": cfg["name"],
        "task": "contrastive",
        "loss": "symmetric InfoNCE",
        "output": "cosine similarity",
        "network": {"open_clip_folder": ".", "model_cfg": model_cfg},
        "prompt_encoder": "open_clip text tower",
        "weights": "open_clip_model.safetensors",
        "parameters": int(n_params),
        "card": {
            "summary": cfg["description"] or f"CLIP '{cfg['name']}' trained contrastively (open_clip architecture)",
            "score_range": [-1.0, 1.0],
            "higher_is_better": True,
            "differentiable": True,
            "input_size": int(model_cfg.get("vision_cfg", {}).get("image_size", data.image_size)),
            "max_text_tokens": int(model_cfg.get("text_cfg", {}).get("context_length", 77)),
            "cost": "cheap",
            "weights": "open_clip_model.safetensors + open_clip_config.json in this folder "
            "(also loadable as {name: clip_score, arch: <this folder>})",
            "reference": "CLIP, Radford et al. 2021 (arXiv 2103.00020); open_clip",
            "extra": {
                "validation": {"top1_in_batch": module.history[-1].get("val_top1") if module.history else None},
                "calibration": cal,
                "zscore": zscore_from(cal),
                "training_data": data.summary(),
                "training": {"epochs_run": len(module.history), "history": module.history, "seconds": round(seconds, 3),
                             "monitor": monitor, "resumed": bool(resume), "started_from": {"clip_model": m["clip_model"], "clip_pretrained": m["clip_pretrained"]}
                             if m["clip_model"] else "random initialisation"},
                "warnings": data.warnings,
            },
        },
    }
    write_card_files(out, info)
    return out



__all__ = ["train_contrastive", "clip_from_config"]
