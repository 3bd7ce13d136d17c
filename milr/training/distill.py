"""Distillation (``task: distill``): a fast student critic imitates a slow teacher critic.

Images are generated (MiniMUG world: TRAIN-split prompts for training, TEST-split for the held-out
agreement) or read from a JSONL, scored by the teacher (any registered critic, or an ensemble, built
by the component factory, :mod:`milr.factory`), written as pointwise data and fitted with MSE
(:mod:`milr.training.reward`). The student/teacher Spearman on held-out images goes in the card --
knowledge distillation of a reward, as in Hinton et al. 2015 (arXiv 1503.02531) applied to scores.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch

from milr.training.card import write_card_files
from milr.training.data import DataError, read_jsonl
from milr.training.module import spearman
from milr.training.reward import train_reward

log = logging.getLogger("milr.training")


def build_teacher(spec: dict, model_spec: Optional[dict] = None, device: str = "cpu"):
    """A critic from ``{name: ..., **args}``, or an ensemble from ``{critics: [...], combine: {...}}``.

    Built by the component factory (:mod:`milr.factory`), as a recipe's critics are: the model
    and the device are injected where the constructors take them, members are named as in a run.
    """
    from milr.factory import build_component, build_critic, build_ensemble
    from milr.recipe import ComponentSpec, CriticSpec
    from milr.registry import MODELS

    model = None
    if model_spec:
        ms = ComponentSpec(**model_spec)
        model = build_component(MODELS, ms.name, ms.args, device=device)
    if "critics" in spec:
        specs = [CriticSpec(**c) for c in spec["critics"]]
        return build_ensemble(specs, spec.get("combine"), model, device, always=True)[0]
    if "name" not in spec:
        raise ValueError(f"distill.teacher must be {{name: ..., args}} or {{critics: [...]}}, got {spec!r}")
    return build_critic(ComponentSpec(**spec), model, device)


def _images_tensor(examples: list[dict]) -> torch.Tensor:
    import numpy as np

    arr = np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)


@torch.no_grad()
def teacher_scores(teacher, examples: list[dict], batch_size: int) -> list[float]:
    out: list[float] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        r = teacher.score(_images_tensor(chunk), [e["prompt"] for e in chunk], [e.get("metadata") or {} for e in chunk])
        out += [float(x) for x in r.detach().float().cpu()]
    bad = [s for s in out if not math.isfinite(s)]
    if bad:
        raise ValueError(f"the teacher returned {len(bad)} non-finite scores; cannot distil it")
    return out


def _distill_examples(d: dict) -> tuple[list[dict], list[dict]]:
    """(train examples, held-out examples) with uint8 HWC images."""
    if d["source"] == "world":
        from milr.world.data import world_images

        train = world_images(int(d["n_train"]), "train", d["tags"], int(d["seed"]), float(d["follow_fraction"]))
        test = world_images(int(d["n_test"]), "test", d["tags"], int(d["seed"]) + 1, float(d["follow_fraction"]))
        return train, test
    import random

    import numpy as np
    from PIL import Image

    rows = read_jsonl(d["source"])
    root = Path(d["source"]).resolve().parent
    ex = []
    for r in rows:
        if "prompt" not in r or "image" not in r:
            raise DataError(f"{r['_line']}: distillation images need 'prompt' and 'image'")
        p = Path(r["image"]) if os.path.isabs(r["image"]) else root / r["image"]
        with Image.open(p) as im:
            ex.append({"prompt": r["prompt"], "metadata": r.get("metadata") or {}, "image": np.asarray(im.convert("RGB"))})
    random.Random(int(d["seed"])).shuffle(ex)
    n_test = min(int(d["n_test"]), len(ex) // 4)
    if n_test < 3:
        raise DataError(f"{d['source']}: too few images ({len(ex)}) to hold some out for the rank agreement")
    return ex[n_test:], ex[:n_test]


def train_distill(cfg: dict, out: Path, resume: bool = False) -> Path:
    from milr.world.data import save_examples

    d = cfg["distill"]
    t0 = time.perf_counter()
    teacher = build_teacher(d["teacher"], d["teacher_model"], "cpu" if cfg["train"]["accelerator"] == "cpu" else "cuda")
    train_ex, test_ex = _distill_examples(d)
    for e, s in zip(train_ex, teacher_scores(teacher, train_ex, int(d["batch_size"]))):
        e["score"] = s
    test_scores = teacher_scores(teacher, test_ex, int(d["batch_size"]))
    teacher_seconds = time.perf_counter() - t0
    data_dir = out / "distill_data"
    train_file = save_examples(train_ex, data_dir, "teacher_scores.jsonl", extra_keys=("score",))
    student_cfg = copy.deepcopy(cfg)
    student_cfg["task"] = "pointwise"
    student_cfg["loss"] = "mse"
    student_cfg["data"].update({"train": str(train_file), "val": None, "test": None, "format": "jsonl", "columns": {},
                                "image_root": str(data_dir), "target": "score"})
    train_reward(student_cfg, out, resume)
    # Rank agreement on held-out images (TEST-split prompts for the world source).
    from milr.critics.trained import TrainedCritic

    student = TrainedCritic(str(out))
    t1 = time.perf_counter()
    s = student.score(_images_tensor(test_ex), [e["prompt"] for e in test_ex], [e.get("metadata") or {} for e in test_ex])
    student_seconds = time.perf_counter() - t1
    from scipy.stats import pearsonr

    rho = spearman(s.tolist(), test_scores)
    pear = float(pearsonr(s.tolist(), test_scores).statistic) if len(set(test_scores)) > 1 else float("nan")
    info = json.loads((out / "critic.json").read_text())
    teacher_name = d["teacher"].get("name") or "ensemble"
    info["card"]["summary"] = cfg["description"] or f"Student distilled from teacher '{teacher_name}'"
    info["card"]["extra"]["distill"] = {
        "teacher": d["teacher"],
        "source": d["source"],
        "n_train": len(train_ex),
        "n_heldout": len(test_ex),
        "heldout": "TEST-split world prompts" if d["source"] == "world" else "a random quarter of the images",
        "spearman_heldout": rho,
        "pearson_heldout": pear,
        "teacher_seconds_total": round(teacher_seconds, 2),
        "student_seconds_per_image": student_seconds / max(1, len(test_ex)),
    }
    write_card_files(out, info)
    log.info("distill: student/teacher Spearman on %d held-out images = %.3f", len(test_ex), rho)
    return out



__all__ = ["train_distill", "build_teacher", "teacher_scores"]
