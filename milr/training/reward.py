"""Reward-model training (``task: pairwise`` and ``pointwise``): a :class:`RewardNet` fitted with Lightning.

Pairwise: the Bradley-Terry loss of TRL's ``RewardTrainer`` and ImageReward (Xu et al. 2023,
arXiv 2304.05977), with margins and ties; pointwise: MSE on standardised scores or BCE on labels.
After training the kept checkpoint (best validation ``monitor``) is scored on the validation set
(accuracy, calibration mean/std/quantiles: the card's ``zscore`` block an ensemble can normalise
with) and on ``data.test`` when given, and the folder is written for the ``trained`` critic.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from milr.critics.reward_net import RewardNet, WordTokenizer, open_clip_model_cfg, output_transform, predict, split_words
from milr.training.card import FORMAT, FORMAT_VERSION, save_state, write_card_files, zscore_from
from milr.training.data import CriticData, DataError
from milr.training.module import (BradleyTerryLoss, CriticModule, PointwiseLoss, check_stall, fit, load_best,
                                  seed_everything, spearman, stats)

log = logging.getLogger("milr.training")

NET_KEYS = ("backbone", "width", "depth", "stem", "text_encoder", "text_dim", "text_layers", "max_words", "clip_model",
            "clip_pretrained", "blip_model", "head", "finetune", "head_hidden", "dropout")


def evaluate(net: RewardNet, data: CriticData, rows: list[dict], task: str, loss_kind: Optional[str]) -> tuple[dict, dict]:
    """(score statistics, metrics) of the critic's scores on ``rows`` (validation or test)."""
    if not rows:
        return {}, {}
    tf, _ = output_transform(task, loss_kind, data.target_mean, data.target_std)
    batch = data.batch(rows)
    prompts = batch["prompt"]
    if task == "pairwise":
        rc = tf(predict(net, batch["chosen"], prompts))
        rr = tf(predict(net, batch["rejected"], prompts))
        untied = ~batch["tie"]
        d = (rc - rr)[untied]
        metrics = {"pairwise_accuracy": float((d > 0).float().mean() + 0.5 * (d == 0).float().mean()) if len(d) else float("nan"),
                   "mean_margin": float(d.mean()) if len(d) else float("nan"), "n_pairs": len(prompts)}
        if not bool(untied.all()):
            metrics["n_ties"] = int((~untied).sum())
        return {"all": stats(torch.cat([rc, rr])), "chosen": stats(rc), "rejected": stats(rr)}, metrics
    s = tf(predict(net, batch["image"], prompts))
    ref = batch["target"]
    if data.target == "score":
        ref = ref * data.target_std + data.target_mean
    metrics = {"spearman": spearman(s.tolist(), ref.tolist()), "n": len(prompts)}
    if loss_kind == "bce":
        metrics["accuracy"] = float(((s > 0.5).float() == ref).float().mean())
    return {"all": stats(s)}, metrics


def init_config(init_from: str, data: CriticData) -> tuple[dict, dict, Path]:
    """Network config of the critic to fine-tune (its architecture and vocabulary are kept)."""
    from milr.critics.trained import read_info, resolve_checkpoint

    folder = resolve_checkpoint(init_from)
    info = read_info(folder)
    if info["task"] not in ("pairwise", "pointwise"):
        raise DataError(f"model.init_from: {folder} is a {info['task']} critic; only reward models can be fine-tuned here")
    cfg = {k: v for k, v in info["network"].items() if not k.startswith("_")}
    for key in ("clip_model", "blip_model"):
        if cfg.get(key) and (folder / str(cfg[key])).exists():
            cfg[key] = str(folder / str(cfg[key]))
    if int(cfg["image_size"]) != data.image_size:
        raise DataError(f"model.init_from: {folder} was trained on {cfg['image_size']} px images, the data has {data.image_size} px")
    note = {"init_from": str(folder), "init_task": info["task"]}
    if "vocab" in cfg:
        unknown = sorted({w for p in data.prompts() for w in split_words(p)} - set(cfg["vocab"]))
        if unknown:
            log.warning("model.init_from: %d words of the data are not in the critic's vocabulary (read as <unk>): %s",
                        len(unknown), unknown[:10])
            note["unknown_words"] = unknown[:50]
    return cfg, note, folder


def build_net(cfg: dict, data: CriticData) -> tuple[RewardNet, dict, Optional[dict]]:
    """The network to train: from the recipe, or the ``init_from`` critic with its weights."""
    m = cfg["model"]
    if m["init_from"]:
        from safetensors.torch import load_file

        net_cfg, note, folder = init_config(m["init_from"], data)
        net = RewardNet(net_cfg)
        state = load_file(str(folder / "model.safetensors"))
        expected = net.state_dict()
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        return net, net_cfg, note
    net_cfg = {k: m[k] for k in NET_KEYS}
    net_cfg["image_size"] = data.image_size
    if m["backbone"] == "cnn" and m["text_encoder"] != "clip":
        net_cfg["vocab"] = WordTokenizer.build(data.prompts(), int(m["max_words"])).vocab
    return RewardNet(net_cfg), net_cfg, None


def _self_contained(net: RewardNet, net_cfg: dict, out: Path, name: str) -> tuple[dict, list[str]]:
    """Copy the backbone's architecture files into the folder so it loads after the originals are gone."""
    files: list[str] = []
    if net_cfg.get("clip_model") and open_clip_model_cfg(net_cfg["clip_model"]) is not None:
        clip_file = f"{name}-clip.json"
        (out / clip_file).write_text(json.dumps(open_clip_model_cfg(net_cfg["clip_model"]), indent=2))
        net_cfg = {**net_cfg, "clip_model": clip_file, "clip_pretrained": None}
        files.append(clip_file)
    if net_cfg.get("backbone") == "blip":
        files += [f"blip/{f}" for f in net.save_backbone_files(out / "blip")]
        net_cfg = {**net_cfg, "blip_model": "blip"}
    return net_cfg, files


def train_reward(cfg: dict, out: Path, resume: bool = False) -> Path:
    """Pairwise / pointwise training; writes the checkpoint folder and returns it."""
    seed_everything(cfg["train"]["seed"])
    data = CriticData(cfg)
    task = data.task
    loss_kind = (cfg["loss"] or ("bce" if data.target == "label" else "mse")) if task == "pointwise" else None
    if task == "pointwise" and loss_kind == "bce" and data.target == "score":
        raise DataError("loss bce needs 0/1 'label' targets; use loss: mse for 'score' targets")
    t = cfg["train"]
    monitor = t["monitor"] or "val_loss"
    if task == "pointwise" and monitor == "val_acc" and loss_kind != "bce":
        raise DataError("train.monitor val_acc needs binary labels; use val_loss or val_spearman")
    net, net_cfg, init_note = build_net(cfg, data)
    loss = BradleyTerryLoss() if task == "pairwise" else PointwiseLoss(loss_kind)
    module = CriticModule(net, loss, float(t["lr"]), float(t["weight_decay"]), int(t["epochs"]))
    best, seconds = fit(cfg, data, module, out, monitor, resume)
    load_best(module, best)
    net.eval()
    cal, val_metrics = evaluate(net, data, data.val_rows, task, loss_kind)
    _, test_metrics = evaluate(net, data, data.test_rows, task, loss_kind)
    warnings_ = data.warnings + check_stall(task, module.history, val_metrics.get("pairwise_accuracy"))
    _, rng = output_transform(task, loss_kind, data.target_mean, data.target_std)
    save_state(net.state_dict(), out / "model.safetensors", t["weights_dtype"])
    net_cfg, extra_files = _self_contained(net, net_cfg, out, cfg["name"])
    m = cfg["model"]
    text_kind = net.text_kind
    prompt_enc = {"clip": "open_clip text tower", "blip": "BLIP image-grounded text encoder",
                  "words": f"word transformer over a {len(net_cfg.get('vocab', []))}-word vocabulary",
                  "bow": f"bag of words over a {len(net_cfg.get('vocab', []))}-word vocabulary"}[text_kind]
    extra: dict = {"validation": val_metrics, "calibration": cal, "zscore": zscore_from(cal)}
    if test_metrics:
        extra["test"] = {**test_metrics, "file": cfg["data"]["test"], "checkpoint": "kept (best validation)"}
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": cfg["name"],
        "task": task,
        "loss": "bradley_terry" if task == "pairwise" else loss_kind,
        "output": "raw reward (Bradley-Terry logit)" if task == "pairwise"
        else ("sigmoid probability" if loss_kind == "bce" else "regressed score (target scale)"),
        "target_mean": data.target_mean,
        "target_std": data.target_std,
        "network": net_cfg,
        "prompt_encoder": prompt_enc,
        "weights": "model.safetensors",
        "files": ["model.safetensors", *extra_files],
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "card": {
            "summary": cfg["description"] or f"Trained {task} critic '{cfg['name']}' ({net_cfg['backbone']} backbone)",
            "score_range": list(rng),
            "higher_is_better": True,
            "differentiable": True,
            "input_size": data.image_size,
            "max_text_tokens": int(m["max_words"]) if text_kind in ("words", "bow") else getattr(net, "text_context", 77),
            "cost": "cheap",
            "weights": "model.safetensors in this folder",
            "reference": "Bradley-Terry reward model (TRL RewardTrainer; ImageReward, arXiv 2304.05977)" if task == "pairwise"
            else "pointwise reward regression",
            "extra": {
                **extra,
                "training_data": data.summary(),
                "training": {"epochs_run": len(module.history), "history": module.history, "seconds": round(seconds, 3),
                             "best_checkpoint": os.path.relpath(best, out) if best else None, "monitor": monitor,
                             "resumed": bool(resume), **(init_note or {})},
                "warnings": warnings_,
            },
        },
    }
    write_card_files(out, info)
    return out


def pairwise_accuracy(critic: Any, pairs: str, batch_size: int = 256, image_root: Optional[str] = None) -> dict:
    """Accuracy of any critic on a pairwise file (any format :func:`~milr.training.data.read_table` reads):
    the share of untied pairs whose chosen image scores higher, overall and per ``tag``/``kind`` column."""
    from milr.training.data import ImageStore, check_rows, expand_ranked, read_table, register_images

    rows, root = read_table(pairs)
    store = ImageStore(Path(image_root) if image_root else root, None)
    register_images(rows, store)
    rows = [r for r in check_rows(expand_ranked(rows), "pairwise") if not r.get("tie")]
    hits: list[float] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        prompts = [r["prompt"] for r in chunk]
        md = [r.get("metadata") or {} for r in chunk]
        with torch.no_grad():
            c = critic.score(torch.stack([store.load(r["chosen"]) for r in chunk]).float() / 255, prompts, md)
            rj = critic.score(torch.stack([store.load(r["rejected"]) for r in chunk]).float() / 255, prompts, md)
        hits += ((c > rj).float() + 0.5 * (c == rj).float()).tolist()
    out: dict = {"n_pairs": len(hits), "accuracy": sum(hits) / max(1, len(hits)), "file": str(pairs)}
    for col in ("tag", "kind"):
        groups: dict[str, list[float]] = {}
        for r, h in zip(rows, hits):
            if r.get(col) is not None:
                groups.setdefault(str(r[col]), []).append(h)
        if groups:
            out[f"by_{col}"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    return out


__all__ = ["train_reward", "evaluate", "build_net", "pairwise_accuracy"]
