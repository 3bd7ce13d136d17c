"""Writing a trained critic's folder: weights, ``critic.json`` (network + card), ``card.md``, export.

The folder is what the ``trained`` critic (:mod:`milr.critics.trained`) loads; the card follows
timm/Hugging Face model cards: what it was trained on, how it scored on data it did not see, and
the calibration statistics that make its scores comparable with other critics'.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

FORMAT = "milr-trained-critic"
FORMAT_VERSION = 1
DEPLOY_FILES = ("model.safetensors", "open_clip_model.safetensors", "open_clip_config.json", "critic.json", "card.md")


def save_state(state: dict, path: Path, dtype: str) -> None:
    from safetensors.torch import save_file

    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"train.weights_dtype must be float32, float16 or bfloat16, got {dtype!r}")
    dt = getattr(torch, dtype)
    # Deduplicate shared tensors (safetensors refuses aliases) and keep integer buffers as they are.
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = (v.to(dt) if v.is_floating_point() else v).contiguous().clone()
    save_file(out, str(path))


def card_markdown(info: dict) -> str:
    """The human-readable critic card (``card.md``)."""
    card = info["card"]
    lines = [f"# Critic card: {info['name']}", "", card["summary"], ""]
    lo, hi = card["score_range"]
    lines += [
        f"- task: {info['task']}; higher is better; range [{lo}, {hi}]",
        f"- use in a recipe: `{{name: trained, path: <this folder>}}`",
        f"- input: images resized to {card.get('input_size')} px; prompts: {info.get('prompt_encoder', '')}",
        f"- reference: {card.get('reference', '')}",
        "",
    ]
    extra = card.get("extra", {})
    for section in ("validation", "test", "zscore", "calibration", "training_data", "training", "distill", "figures", "warnings"):
        if section in extra and extra[section]:
            lines += [f"## {section.replace('_', ' ')}", "", "```json", json.dumps(extra[section], indent=2), "```", ""]
    return "\n".join(lines)


def write_card_files(folder: Path, info: dict) -> None:
    (folder / "critic.json").write_text(json.dumps(info, indent=2, default=float))
    (folder / "card.md").write_text(card_markdown(info))


def zscore_from(cal: dict) -> dict:
    """``{"mean", "std"}`` of the scores on the validation set: the normalisation an ensemble can use."""
    all_ = cal.get("all") or cal.get("matched_cosine") or {}
    if not all_ or not all_.get("n"):
        return {}
    return {"mean": float(all_["mean"]), "std": float(all_["std"]) if all_["std"] > 0 else 1.0, "n": int(all_["n"]),
            "set": "validation"}


def clean_cfg(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def export(out: Path, dest: Optional[str], files: Sequence[str]) -> Optional[Path]:
    if not dest:
        return None
    d = Path(dest)  # relative to the working directory, like ``output``
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        if (out / f).is_file():
            (d / f).parent.mkdir(parents=True, exist_ok=True)  # backbone files live in subfolders (blip/)
            shutil.copyfile(out / f, d / f)
            os.chmod(d / f, 0o644)  # safetensors writes 0600; package data must be world-readable
    return d


