"""Train a critic (reward model) with Lightning from a YAML recipe: ``milr train-critic RECIPE``.

What it trains, and after whom:

* ``task: pairwise`` -- JSONL lines ``{"prompt", "chosen", "rejected"}`` (image paths relative to
  ``data.image_root``, default the JSONL's folder). Bradley-Terry loss ``-log sigmoid(r_c - r_r)``,
  the loss of TRL's ``RewardTrainer`` (huggingface/trl) and of ImageReward (Xu et al. 2023,
  arXiv 2304.05977). Validation metric: pairwise accuracy.
* ``task: pointwise`` -- ``{"prompt", "image", "score"}`` (regression, MSE on standardised
  targets) or ``{"prompt", "image", "label"}`` (0/1, binary cross-entropy). Validation metric:
  Spearman rank correlation (scipy).
* ``task: contrastive`` -- ``{"image", "caption"}``: an open_clip CLIP (Radford et al. 2021,
  arXiv 2103.00020; github.com/mlfoundations/open_clip) trained with the symmetric InfoNCE loss;
  captions repeated inside a batch count as positives of each other. The checkpoint is an
  open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) that the
  ``clip_score`` critic loads as ``arch: <folder>``.
* ``task: distill`` -- a fast student imitates a slow teacher critic (any registered critic, or
  an ensemble): images are generated (MiniMUG world) or read from a JSONL, scored by the teacher,
  written as pointwise data and fitted; the student/teacher Spearman on held-out images is
  reported in the card.

Backbones (``model.backbone``): ``cnn`` -- a small CNN for small images whose feature maps are
modulated by the prompt (FiLM, Perez et al. 2018, arXiv 1709.07871), with a prompt encoder over a
word vocabulary built from the training prompts (``text_encoder: words``: embeddings + positions +
one transformer layer, order-aware so "A left of B" differs from "B left of A"; ``bow``: bag of
words; ``clip``: the text tower of an open_clip model) -- or ``open_clip`` -- an open_clip model
(architecture name, local model-config JSON or folder; optional local weights), frozen with a head
on ``[image, text, image*text]`` features, or fine-tuned (``finetune: true``).

A recipe (every key optional except ``task``, ``data.train`` and ``output``)::

    task: pairwise
    name: my-pref
    output: runs/critics/my-pref          # the checkpoint folder
    export: null                          # optional second folder that receives only the deployable files
    data: {train: data/pairs.jsonl, val: null, val_fraction: 0.1, image_root: null, image_size: 32}
    model: {backbone: cnn, width: 32, text_encoder: words}
    train: {epochs: 10, batch_size: 64, lr: 1.0e-3, patience: 3, devices: 1, strategy: auto,
            accelerator: cpu, logger: csv}
    aliases: [my-pref]                    # names printed for the user's critics.yaml

Multi-GPU: ``train.devices: 4`` with ``train.strategy: ddp`` (and ``accelerator: gpu``) are passed
to Lightning's ``Trainer`` unchanged; validation predictions are gathered across processes before
the metrics are computed. Only one process is exercised in this project's tests.

The checkpoint folder holds ``model.safetensors`` (or the open_clip files), ``critic.json`` (the
network config, the critic card with calibration statistics on the validation set, metrics and a
training-data summary), ``card.md`` (the same, for people), ``recipe.yaml`` (resolved), and
Lightning's logs and checkpoints. Use it in a recipe as ``{name: trained, path: <folder>}``.

The "loss stuck at 0.693" guard: pairs whose chosen and rejected images are the same file or the
same pixels are refused, contradictory duplicates are reported, and after training a warning is
logged (and written in the card) when the validation accuracy stayed at chance (ln 2 = 0.693 is
the Bradley-Terry loss of a model that cannot tell the images apart) or fell below it (chosen and
rejected swapped).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from milr.recipe import deep_merge

log = logging.getLogger("milr.train_critic")

TASKS = ("pairwise", "pointwise", "contrastive", "distill")
FORMAT = "milr-trained-critic"
FORMAT_VERSION = 1
LN2 = math.log(2.0)
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

DEFAULTS: dict[str, Any] = {
    "task": None,
    "name": None,
    "description": None,
    "output": None,
    "export": None,
    "aliases": [],
    "data": {
        "train": None,
        "val": None,
        "image_root": None,
        "val_fraction": 0.1,
        "image_size": None,  # default: the size of the first training image
        "target": None,  # pointwise: "score" or "label" (default: whichever the data has, label first)
        "max_examples": None,
        "preload": True,  # keep decoded images in memory (small images)
        # Write MiniMUG world data first (into <output>/data) instead of reading data.train:
        # {format: pairwise|pointwise|captions, n: 2000, n_val: 200, seed: 0, tags: null}
        "generate": None,
    },
    "model": {
        "backbone": "cnn",  # cnn | open_clip
        "width": 32,
        "depth": 4,
        "stem": "conv",  # conv | patch (2x2 patch embedding first: cheaper on a CPU)
        "text_encoder": "words",  # words | bow | clip
        "text_dim": 64,
        "text_layers": 1,
        "max_words": 32,
        "clip_model": None,  # open_clip arch name, model-config JSON or folder
        "clip_pretrained": None,  # local weights or a cached tag
        "finetune": False,
        "head_hidden": 128,
        "dropout": 0.1,
        "init_from": None,  # a trained critic folder (or shipped name) to start from: fine-tuning
        "open_clip_config": None,  # contrastive: the model config (dict) when clip_model is not given
        "preprocess": None,  # contrastive: open_clip preprocess cfg written next to the weights
    },
    "loss": None,  # pointwise: mse | bce (default: bce for labels, mse for scores)
    "train": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 1.0e-3,
        "weight_decay": 1.0e-4,
        "seed": 0,
        "patience": 3,
        "monitor": "val_loss",
        "min_delta": 0.0,
        "devices": 1,
        "accelerator": "cpu",
        "strategy": "auto",
        "precision": "32-true",
        "num_workers": 0,
        "max_time": None,  # Lightning's "DD:HH:MM:SS"
        "max_steps": -1,
        "logger": "csv",  # csv | tensorboard | none
        "log_every_n_steps": 20,
        "threads": None,  # torch.set_num_threads for CPU training
        "weights_dtype": "float32",  # dtype of the saved weights (float16 halves the file)
        "progress_bar": False,
    },
    "distill": {
        "teacher": None,  # {name: ..., **args} or {critics: [{name, weight, ...}], combine: {...}}
        "teacher_model": None,  # {name: minimug, ...} for teachers that judge with a MUG model
        "source": "world",  # "world" or a JSONL of {"prompt", "image"[, "metadata"]}
        "n_train": 2000,
        "n_test": 300,
        "tags": None,
        "follow_fraction": 0.5,
        "seed": 0,
        "batch_size": 32,
    },
}


# =============================================================================================
# Recipe
# =============================================================================================


def _unknown_keys(cfg: dict, defaults: dict, prefix: str = "") -> list[str]:
    bad = []
    for k, v in cfg.items():
        if k not in defaults:
            bad.append(prefix + k)
        elif isinstance(defaults[k], dict) and isinstance(v, dict) and k not in ("teacher", "teacher_model", "open_clip_config", "preprocess"):
            bad += _unknown_keys(v, defaults[k], prefix + k + ".")
    return bad


def _resolve_file_paths(data: dict, base_dir: Path) -> None:
    """Paths written in a recipe file are relative to that file (``output``/``export``: to the working directory)."""

    def fix(section: Any, key: str, must_exist: bool = False) -> None:
        if not isinstance(section, dict):
            return
        v = section.get(key)
        if isinstance(v, str) and v and v != "world" and not os.path.isabs(v) and not v.startswith(("hf-hub:", "local-dir:")):
            cand = base_dir / v
            if not must_exist or cand.exists():
                section[key] = str(cand)

    for key in ("train", "val", "image_root"):
        fix(data.get("data"), key)
    # Model references may also be architecture names or shipped names: only files next to the recipe.
    for key in ("clip_model", "clip_pretrained", "init_from"):
        fix(data.get("model"), key, must_exist=True)
    fix(data.get("distill"), "source")


def load_train_recipe(recipe: Union[str, Path, dict], overrides: Union[Sequence[str], dict, None] = None) -> dict:
    """Read a training recipe (path or dict), apply overrides, fill defaults and check it.

    ``overrides``: dotted ``key.path=value`` strings (values parsed as YAML) or a nested dict.
    Relative paths in the recipe are resolved against the recipe file's folder.
    """
    import yaml

    base_dir = Path.cwd()
    if isinstance(recipe, dict):
        data = copy.deepcopy(recipe)
        source = None
    else:
        path = Path(recipe)
        if not path.is_file():
            from importlib import resources

            shipped = Path(str(resources.files("milr.recipes"))) / (path.name if path.suffix else path.name + ".yaml")
            if shipped.is_file():
                path = shipped
            else:
                raise FileNotFoundError(f"training recipe {recipe} not found (nor a shipped recipe of that name)")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training recipe must be a mapping, found {type(data).__name__}")
        base_dir = path.resolve().parent
        source = str(path)
        _resolve_file_paths(data, base_dir)
    # Overrides come after: their relative paths stay relative to the working directory.
    if isinstance(overrides, dict):
        data = deep_merge(data, overrides)
    elif overrides:
        from milr.recipe import apply_overrides

        data = apply_overrides(data, list(overrides), source)
    bad = _unknown_keys(data, DEFAULTS)
    if bad:
        raise ValueError(f"{source or 'recipe'}: unknown keys {bad}; allowed top-level keys: {sorted(DEFAULTS)}")
    cfg = deep_merge(DEFAULTS, data)
    cfg["_source"] = source
    if cfg["task"] not in TASKS:
        raise ValueError(f"{source or 'recipe'}: task must be one of {TASKS}, got {cfg['task']!r}")
    if not cfg["output"]:
        raise ValueError(f"{source or 'recipe'}: 'output' (the checkpoint folder) is required")
    if cfg["task"] != "distill" and not cfg["data"]["train"] and not cfg["data"]["generate"]:
        raise ValueError(f"{source or 'recipe'}: data.train (a JSONL file) is required for task {cfg['task']}")
    if cfg["task"] == "distill" and not cfg["distill"]["teacher"]:
        raise ValueError(f"{source or 'recipe'}: distill.teacher ({{name: ..., args}}) is required for task distill")
    m = cfg["model"]
    if m["backbone"] not in ("cnn", "open_clip"):
        raise ValueError(f"model.backbone must be 'cnn' or 'open_clip', got {m['backbone']!r}")
    if m["text_encoder"] not in ("words", "bow", "clip"):
        raise ValueError(f"model.text_encoder must be 'words', 'bow' or 'clip', got {m['text_encoder']!r}")
    if (m["backbone"] == "open_clip" or m["text_encoder"] == "clip") and cfg["task"] != "contrastive" and not m["clip_model"]:
        raise ValueError("model.clip_model (an open_clip architecture, model-config JSON or folder) is required "
                         "for backbone open_clip or text_encoder clip")
    if cfg["task"] == "contrastive" and not (m["clip_model"] or m["open_clip_config"]):
        raise ValueError("task contrastive needs model.clip_model (arch/JSON/folder) or model.open_clip_config (a dict)")
    if cfg["loss"] not in (None, "mse", "bce"):
        raise ValueError(f"loss must be 'mse' or 'bce', got {cfg['loss']!r}")
    if cfg["train"]["logger"] not in ("csv", "tensorboard", "none", None, False):
        raise ValueError(f"train.logger must be csv, tensorboard or none, got {cfg['train']['logger']!r}")
    if not 0.0 <= float(cfg["data"]["val_fraction"]) < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {cfg['data']['val_fraction']}")
    cfg["name"] = cfg["name"] or Path(str(cfg["output"])).name
    return cfg


# =============================================================================================
# Data
# =============================================================================================
def read_jsonl(path: Union[str, Path]) -> list[dict]:
    """Rows of a JSONL file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, found {type(row).__name__}")
            row["_line"] = f"{path}:{i}"
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


REQUIRED = {
    "pairwise": ("prompt", "chosen", "rejected"),
    "pointwise": ("prompt", "image"),
    "contrastive": ("image",),
}


def _target_key(rows: list[dict], wanted: Optional[str]) -> str:
    if wanted is not None:
        if wanted not in ("score", "label"):
            raise ValueError(f"data.target must be 'score' or 'label', got {wanted!r}")
        return wanted
    if all("label" in r for r in rows):
        return "label"
    if all("score" in r for r in rows):
        return "score"
    raise ValueError("pointwise data needs a 'label' (0/1) or a 'score' (number) in every line")


def check_rows(rows: list[dict], task: str, target: Optional[str] = None) -> list[dict]:
    """Check fields and values of each row for ``task``; raises with the file:line of the first problem."""
    for r in rows:
        missing = [k for k in REQUIRED[task] if k not in r]
        if task == "contrastive" and "caption" not in r and "prompt" not in r:
            missing.append("caption")
        if missing:
            raise ValueError(f"{r.get('_line', '?')}: missing fields {missing} for {task} data "
                             f"(expected {list(REQUIRED[task]) + (['caption'] if task == 'contrastive' else [])})")
        if task == "pointwise" and target is not None:
            if target not in r:
                raise ValueError(f"{r.get('_line', '?')}: missing '{target}'")
            v = r[target]
            if isinstance(v, bool) and target == "label":
                v = r[target] = int(v)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError(f"{r.get('_line', '?')}: '{target}' must be a finite number, got {v!r}")
            if target == "label" and float(v) not in (0.0, 1.0):
                raise ValueError(f"{r.get('_line', '?')}: 'label' must be 0 or 1, got {v!r} (use 'score' for graded targets)")
    return rows


class ImageStore:
    """Decodes images (relative to ``root``) to uint8 ``[3, S, S]`` tensors, cached in memory."""

    def __init__(self, root: Path, size: Optional[int], preload: bool = True):
        self.root = Path(root)
        self.size = size
        self.preload = preload
        self._cache: dict[str, torch.Tensor] = {}

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def load(self, rel: str) -> torch.Tensor:
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        from PIL import Image

        p = self.path(rel)
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if self.size is None:
                    self.size = im.size[0] if im.size[0] == im.size[1] else min(im.size)
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.BICUBIC)
                import numpy as np

                t = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        except FileNotFoundError:
            raise FileNotFoundError(f"image {p} not found (paths are relative to data.image_root={self.root})") from None
        if self.preload:
            self._cache[rel] = t
        return t

    def file_hash(self, rel: str) -> str:
        return hashlib.sha1(self.path(rel).read_bytes()).hexdigest()


class RowsDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict], task: str, store: ImageStore, target: Optional[str] = None,
                 target_mean: float = 0.0, target_std: float = 1.0):
        self.rows, self.task, self.store, self.target = rows, task, store, target
        self.mean, self.std = target_mean, target_std

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        if self.task == "pairwise":
            return {"prompt": r["prompt"], "chosen": self.store.load(r["chosen"]), "rejected": self.store.load(r["rejected"])}
        if self.task == "pointwise":
            y = float(r[self.target])
            if self.target == "score":
                y = (y - self.mean) / self.std
            return {"prompt": r["prompt"], "image": self.store.load(r["image"]), "target": torch.tensor(y)}
        return {"prompt": r.get("caption", r.get("prompt")), "image": self.store.load(r["image"])}


def collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {"prompt": [it["prompt"] for it in items]}
    for k in ("chosen", "rejected", "image"):
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items]).float().div_(255.0)
    if "target" in items[0]:
        out["target"] = torch.stack([it["target"] for it in items]).float()
    return out


def check_pairs(rows: list[dict], store: ImageStore) -> tuple[list[dict], list[str]]:
    """Guard against the classic "loss stuck at 0.693": identical or contradictory pairs.

    Returns the kept rows and warnings. Raises when every pair is degenerate.
    """
    warnings_: list[str] = []
    kept = []
    same = 0
    for r in rows:
        if r["chosen"] == r["rejected"] or store.file_hash(r["chosen"]) == store.file_hash(r["rejected"]):
            same += 1
            continue
        kept.append(r)
    if same:
        if not kept:
            raise ValueError(
                f"all {same} pairs have identical chosen and rejected images: nothing to learn (the Bradley-Terry loss "
                f"would stay at ln 2 = 0.693). Check that 'chosen' and 'rejected' point to different images."
            )
        warnings_.append(f"dropped {same} of {len(rows)} pairs whose chosen and rejected images are identical")
    seen = {(r["prompt"], r["chosen"], r["rejected"]) for r in kept}
    flipped = sum((r["prompt"], r["rejected"], r["chosen"]) in seen for r in kept)
    if flipped:
        warnings_.append(
            f"{flipped} pairs also appear with chosen and rejected swapped; contradictory pairs pull the loss to 0.693"
        )
    for w in warnings_:
        log.warning(w)
    return kept, warnings_


class CriticData:
    """Rows, splits and loaders for one training run (wrapped by :class:`CriticDataModule`)."""

    def __init__(self, cfg: dict):
        import random

        self.cfg = cfg
        task = "pointwise" if cfg["task"] == "distill" else cfg["task"]
        self.task = task
        d = cfg["data"]
        train_rows = read_jsonl(d["train"])
        root = Path(d["image_root"]) if d["image_root"] else Path(d["train"]).resolve().parent
        self.store = ImageStore(root, d["image_size"], bool(d["preload"]))
        self.target = _target_key(train_rows, d["target"]) if task == "pointwise" else None
        check_rows(train_rows, task, self.target)
        if d["val"]:
            val_rows = check_rows(read_jsonl(d["val"]), task, self.target)
        else:
            rng = random.Random(int(cfg["train"]["seed"]))
            order = list(range(len(train_rows)))
            rng.shuffle(order)
            n_val = max(1, int(round(len(train_rows) * float(d["val_fraction"])))) if d["val_fraction"] else 0
            if n_val >= len(train_rows):
                raise ValueError(f"{d['train']}: {len(train_rows)} examples are too few to hold out {n_val} for validation")
            val_rows = [train_rows[i] for i in order[:n_val]]
            train_rows = [train_rows[i] for i in order[n_val:]]
        if d["max_examples"]:
            train_rows = train_rows[: int(d["max_examples"])]
        self.warnings: list[str] = []
        if task == "pairwise":
            train_rows, w = check_pairs(train_rows, self.store)
            val_rows, w2 = check_pairs(val_rows, self.store) if val_rows else (val_rows, [])
            self.warnings += w + [f"validation: {x}" for x in w2]
        self.train_rows, self.val_rows = train_rows, val_rows
        # Decode one image now: fixes the image size and fails early on a missing folder.
        first = train_rows[0]
        self.store.load(first.get("chosen", first.get("image")))
        self.image_size = int(self.store.size)
        self.target_mean, self.target_std = 0.0, 1.0
        if task == "pointwise" and self.target == "score":
            ys = torch.tensor([float(r["score"]) for r in train_rows])
            self.target_mean = float(ys.mean())
            self.target_std = float(ys.std()) if len(ys) > 1 and float(ys.std()) > 1e-8 else 1.0

    def dataset(self, rows: list[dict]) -> RowsDataset:
        return RowsDataset(rows, self.task, self.store, self.target, self.target_mean, self.target_std)

    def prompts(self) -> list[str]:
        return [r.get("prompt", r.get("caption", "")) for r in self.train_rows]

    def summary(self) -> dict:
        def tags(rows):
            out: dict[str, int] = {}
            for r in rows:
                t = r.get("tag") or (r.get("metadata") or {}).get("tag")
                if t:
                    out[t] = out.get(t, 0) + 1
            return dict(sorted(out.items()))

        d = self.cfg["data"]
        s = {
            "format": self.task,
            "train_file": d["train"],
            "val_file": d["val"] or f"{d['val_fraction']:g} of train (seed {self.cfg['train']['seed']})",
            "train_examples": len(self.train_rows),
            "val_examples": len(self.val_rows),
            "distinct_train_prompts": len({r.get("prompt", r.get("caption")) for r in self.train_rows}),
            "image_size": self.image_size,
        }
        if tags(self.train_rows):
            s["train_tags"] = tags(self.train_rows)
        if self.target:
            s["target"] = self.target
            if self.target == "score":
                s["target_mean"], s["target_std"] = self.target_mean, self.target_std
            else:
                s["positive_fraction"] = sum(float(r["label"]) for r in self.train_rows) / len(self.train_rows)
        return s


def _make_datamodule(data: CriticData, batch_size: int, num_workers: int):
    import lightning as L

    class CriticDataModule(L.LightningDataModule):
        """Train/val loaders over JSONL rows (see :class:`CriticData`)."""

        def __init__(self):
            super().__init__()
            self.data = data

        def train_dataloader(self):
            return torch.utils.data.DataLoader(data.dataset(data.train_rows), batch_size=batch_size, shuffle=True,
                                               collate_fn=collate, num_workers=num_workers, drop_last=len(data.train_rows) > batch_size)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(data.dataset(data.val_rows), batch_size=batch_size, shuffle=False,
                                               collate_fn=collate, num_workers=num_workers)

    return CriticDataModule()


# =============================================================================================
# Networks
# =============================================================================================
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level ids over a fixed vocabulary; 0 is padding, 1 an unknown word."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, vocab: list[str], max_words: int):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_words = int(max_words)

    @classmethod
    def build(cls, texts: Sequence[str], max_words: int) -> "WordTokenizer":
        words = sorted({w for t in texts for w in split_words(t)})
        return cls([cls.PAD, cls.UNK] + words, max_words)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.max_words, dtype=torch.long)
        for i, t in enumerate(texts):
            ws = [self.index.get(w, 1) for w in split_words(t)][: self.max_words]
            if ws:
                ids[i, : len(ws)] = torch.tensor(ws)
        return ids


class WordEncoder(nn.Module):
    """Prompt vector from word ids: mean of embeddings (``bow``) or a small transformer (``words``)."""

    def __init__(self, vocab_size: int, dim: int, max_words: int, mode: str, layers: int):
        super().__init__()
        self.mode = mode
        self.emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        if mode == "words":
            self.pos = nn.Parameter(torch.randn(max_words, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, nhead=4 if dim % 4 == 0 else 1, dim_feedforward=2 * dim,
                                               dropout=0.0, batch_first=True, norm_first=True)
            self.enc = nn.TransformerEncoder(layer, num_layers=max(1, int(layers)), enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.emb(ids)
        if self.mode == "words":
            x = x + self.pos[: ids.shape[1]]
            # An all-padding row (empty prompt) would make attention NaN: let it attend to slot 0.
            pad_attn = pad.clone()
            pad_attn[:, 0] = False
            x = self.enc(x, src_key_padding_mask=pad_attn)
        keep = (~pad).unsqueeze(-1).float()
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class FiLMCNN(nn.Module):
    """Conv blocks (conv -> GroupNorm -> FiLM(prompt) -> ReLU -> pool) and a flattened final map.

    ``stem="patch"`` starts with a non-overlapping 2x2 patch convolution (a linear map of each
    patch, as ViT's patch embedding) so the later blocks run at half resolution: about four times
    less activation memory traffic, which dominates small-CNN training on a CPU. The final map is
    flattened, not pooled, so where things are survives (for "left of"/"above").
    """

    def __init__(self, image_size: int, width: int, depth: int, cond_dim: int, stem: str = "conv"):
        super().__init__()
        if stem not in ("conv", "patch"):
            raise ValueError(f"model.stem must be 'conv' or 'patch', got {stem!r}")
        chans = [3] + [width * 2 ** min(i, 2) for i in range(depth)]
        self.convs, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            if i == 0 and stem == "patch":
                self.convs.append(nn.Conv2d(cin, cout, 2, stride=2))
            else:
                self.convs.append(nn.Conv2d(cin, cout, 3, padding=1))
            self.norms.append(nn.GroupNorm(min(8, cout), cout))
            film = nn.Linear(cond_dim, 2 * cout)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
            self.films.append(film)
        s = image_size // 2 if stem == "patch" else image_size
        self.pools = []
        for i in range(depth):
            pool = i < depth - 1 and s >= 8 and not (i == 0 and stem == "patch")
            self.pools.append(pool)
            s = s // 2 if pool else s
        self.final = min(s, 4)
        self.out_dim = chans[-1] * self.final * self.final

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = x * 2.0 - 1.0
        for conv, norm, film, pool in zip(self.convs, self.norms, self.films, self.pools):
            h = norm(conv(h))
            g, b = film(cond).chunk(2, dim=-1)
            h = F.relu(h * (1.0 + g[..., None, None]) + b[..., None, None])
            if pool:
                h = F.max_pool2d(h, 2)
        h = F.adaptive_avg_pool2d(h, self.final)
        return h.flatten(1)


class RewardNet(nn.Module):
    """``r(image, prompt)``: an image encoder and a prompt encoder joined by an MLP head.

    ``config`` (JSON) describes the whole network, so ``RewardNet(config)`` plus the saved state
    dict restores it. Images are ``[B, 3, H, W]`` in [0, 1]; they are resized to the trained size.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        c = config
        self.image_size = int(c["image_size"])
        self.backbone = c["backbone"]
        self.text_kind = c["text_encoder"] if c["backbone"] == "cnn" else "clip"
        self.pp_cfg: dict = {}
        if self.backbone == "open_clip" or self.text_kind == "clip":
            from milr.critics.clip_score import load_open_clip

            # When restoring a checkpoint its weights are loaded afterwards: build the architecture only.
            pretrained = None if c.get("_restoring") else c.get("clip_pretrained")
            arch = str(c["clip_model"])
            if c.get("_folder") and not os.path.isabs(arch) and (Path(c["_folder"]) / arch).is_file():
                arch = str(Path(c["_folder"]) / arch)  # the model config saved inside the checkpoint folder
            self.clip, self.clip_tokenizer, self.pp_cfg = load_open_clip(arch, pretrained)
            self.clip_context = int(getattr(self.clip, "context_length", 77) or 77)
            for p in self.clip.parameters():
                p.requires_grad_(bool(c["finetune"]))
            # A frozen tower stays in eval mode (fixed features, no dropout); a fine-tuned one trains.
            self.clip.train(bool(c["finetune"]))
            with torch.no_grad():
                tdim = int(self.clip.encode_text(self.clip_tokenizer(["a"])).shape[-1])
        else:
            self.tokenizer = WordTokenizer(c["vocab"], c["max_words"])
            self.text = WordEncoder(len(c["vocab"]), int(c["text_dim"]), int(c["max_words"]), self.text_kind, int(c["text_layers"]))
            tdim = self.text.out_dim
        hid = int(c["head_hidden"])
        if self.backbone == "cnn":
            self.image = FiLMCNN(self.image_size, int(c["width"]), int(c["depth"]), tdim, c.get("stem", "conv"))
            in_dim = self.image.out_dim + tdim
        else:
            in_dim = 3 * tdim  # [image, text, image * text] of unit-norm CLIP embeddings
        self.head = nn.Sequential(nn.Linear(in_dim, hid), nn.ReLU(), nn.Dropout(float(c["dropout"])), nn.Linear(hid, 1))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.text_kind == "clip":
            return self.clip.encode_text(tokens).float()
        return self.text(tokens)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text_kind == "clip":
            return self.clip_tokenizer(list(prompts))
        return self.tokenizer(prompts)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = self.encode_text(tokens)
        if self.backbone == "cnn":
            if images.shape[-2:] != (self.image_size, self.image_size):
                images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                       align_corners=False, antialias=images.shape[-1] > self.image_size)
            return self.head(torch.cat([self.image(images, t), t], dim=-1)).squeeze(-1)
        from milr.critics.clip_score import preprocess_tensor

        i = self.clip.encode_image(preprocess_tensor(images, self.pp_cfg)).float()
        i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
        return self.head(torch.cat([i, t, i * t], dim=-1)).squeeze(-1)


def _open_clip_model_cfg(arch: str) -> Optional[dict]:
    """The model config behind an open_clip reference that is a file or folder (None for built-in names)."""
    p = Path(str(arch))
    if p.is_dir():
        return json.loads((p / "open_clip_config.json").read_text())["model_cfg"]
    if p.is_file():
        cfg = json.loads(p.read_text())
        return cfg.get("model_cfg", cfg)
    return None


def _clip_from_config(m: dict) -> tuple[nn.Module, Any, dict, dict]:
    """Contrastive task: build the open_clip model to train; returns (model, tokenizer, pp_cfg, model_cfg)."""
    from milr.critics.clip_score import load_open_clip

    if m["clip_model"]:
        model, tok, pp = load_open_clip(m["clip_model"], m["clip_pretrained"])
        arch = str(m["clip_model"])
        p = Path(arch)
        if p.is_dir():
            cfg = json.loads((p / "open_clip_config.json").read_text())["model_cfg"]
        elif p.is_file():
            cfg = json.loads(p.read_text())
            cfg = cfg.get("model_cfg", cfg)
        else:
            import open_clip

            cfg = open_clip.get_model_config(arch)
        return model, tok, pp, copy.deepcopy(cfg)
    # An inline config: write it to a temporary file and load it through the same path.
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="milr-clip-")) / "inline-clip.json"
    tmp.write_text(json.dumps(m["open_clip_config"]))
    model, tok, pp = load_open_clip(str(tmp), m["clip_pretrained"])
    return model, tok, pp, copy.deepcopy(m["open_clip_config"])


# =============================================================================================
# Lightning module
# =============================================================================================
def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    r = spearmanr(list(a), list(b)).statistic
    return float(r) if r == r else float("nan")


def _make_module(task: str, net: nn.Module, loss_kind: Optional[str], lr: float, weight_decay: float, epochs: int,
                 tokenizer=None):
    import lightning as L

    class CriticModule(L.LightningModule):
        """Loss, validation metrics and optimiser for one critic-training task."""

        def __init__(self):
            super().__init__()
            self.net = net
            self.task = task
            self.loss_kind = loss_kind
            self.tok = tokenizer or net.tokenize
            self.history: list[dict] = []
            self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

        # -- steps ---------------------------------------------------------------------------
        def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """(loss, predictions, reference) for one batch."""
            tokens = self.tok(batch["prompt"]).to(self.device)
            if self.task == "pairwise":
                both = torch.cat([batch["chosen"], batch["rejected"]])
                r = self.net(both, torch.cat([tokens, tokens]))
                rc, rr = r.chunk(2)
                margin = rc - rr
                return -F.logsigmoid(margin).mean(), margin.detach(), torch.ones_like(margin)
            if self.task == "pointwise":
                pred = self.net(batch["image"], tokens)
                y = batch["target"]
                loss = F.binary_cross_entropy_with_logits(pred, y) if self.loss_kind == "bce" else F.mse_loss(pred, y)
                return loss, pred.detach(), y
            return self._contrastive(batch["image"], tokens, batch["prompt"])

        def _contrastive(self, images, tokens, captions):
            m = self.net
            from milr.critics.clip_score import preprocess_tensor

            img = F.normalize(m.encode_image(preprocess_tensor(images, m._milr_pp)), dim=-1)
            txt = F.normalize(m.encode_text(tokens), dim=-1)
            logits = m.logit_scale.exp().clamp(max=100.0) * img @ txt.t()
            # Repeated captions are positives of each other (soft targets), not false negatives.
            same = torch.tensor([[a == b for b in captions] for a in captions], dtype=logits.dtype, device=logits.device)
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                          + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())
            hit = same[torch.arange(len(captions)), logits.argmax(1)]
            return loss, hit.detach(), torch.ones_like(hit)

        def training_step(self, batch, batch_idx):
            loss, _, _ = self._step(batch)
            self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["prompt"]))
            return loss

        def validation_step(self, batch, batch_idx):
            loss, pred, ref = self._step(batch)
            self.log("val_loss", loss, prog_bar=True, batch_size=len(batch["prompt"]), sync_dist=True)
            self._val.append((pred.float().cpu(), ref.float().cpu()))

        def on_validation_epoch_start(self):
            self._val = []

        def on_validation_epoch_end(self):
            if not self._val:
                return
            pred = torch.cat([p for p, _ in self._val]).to(self.device)
            ref = torch.cat([r for _, r in self._val]).to(self.device)
            if self.trainer.world_size > 1:  # DDP: metrics over every process's predictions
                pred, ref = self.all_gather(pred).flatten(), self.all_gather(ref).flatten()
            pred, ref = pred.cpu(), ref.cpu()
            metrics: dict[str, float] = {}
            if self.task == "pairwise":
                metrics["val_acc"] = float((pred > 0).float().mean()) + 0.5 * float((pred == 0).float().mean())
            elif self.task == "pointwise":
                metrics["val_spearman"] = spearman(pred.tolist(), ref.tolist())
                if self.loss_kind == "bce":
                    metrics["val_acc"] = float(((pred > 0).float() == ref).float().mean())
            else:
                metrics["val_top1"] = float(pred.mean())
            for k, v in metrics.items():
                if v == v:  # already computed over every process's predictions: the sync averages equal values
                    self.log(k, v, prog_bar=True, sync_dist=True)
            if not self.trainer.sanity_checking:
                row = {"epoch": int(self.current_epoch), **metrics}
                vl = self.trainer.callback_metrics.get("val_loss")
                if vl is not None:
                    row["val_loss"] = float(vl)
                self.history.append(row)

        def configure_optimizers(self):
            params = [p for p in self.parameters() if p.requires_grad]
            if not params:
                raise ValueError("nothing to train: every parameter is frozen")
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(epochs)))
            return {"optimizer": opt, "lr_scheduler": sched}

    return CriticModule()


# =============================================================================================
# Training
# =============================================================================================
def _loggers(kind: Optional[str], out: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger

    if kind in (None, "none", False):
        return []
    loggers = [CSVLogger(str(out), name="logs")]
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(str(out), name="tensorboard"))
        except ImportError:
            log.warning("train.logger=tensorboard but tensorboard is not installed; logging to CSV only")
    return loggers


def _mode(monitor: str) -> str:
    return "min" if "loss" in monitor else "max"


def _check_stall(task: str, history: list[dict]) -> list[str]:
    """Warnings for the classic Bradley-Terry failure modes, from the validation history."""
    accs = [h["val_acc"] for h in history if "val_acc" in h]
    if task != "pairwise" or not accs:
        return []
    out = []
    if len(accs) >= 2 and all(abs(a - 0.5) < 0.02 for a in accs):  # "stays": over at least two validations
        out.append(
            "validation accuracy stayed at 0.5 (the Bradley-Terry loss is then ln 2 = 0.693): the model cannot tell chosen "
            "from rejected. Check that the two images differ, that the prompt is passed, the learning rate, and that the "
            "backbone is not frozen without a head that sees both image and prompt."
        )
    elif accs[-1] < 0.35:
        out.append(
            f"validation accuracy {accs[-1]:.2f} is well below chance: 'chosen' and 'rejected' may be swapped in the data"
        )
    for w in out:
        log.warning(w)
    return out


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Raw network outputs for float images ``[B, 3, H, W]`` in [0, 1]."""
    net.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(net(images[i : i + batch_size], net.tokenize(prompts[i : i + batch_size])).float())
    return torch.cat(out) if out else torch.zeros(0)


def _stats(x: torch.Tensor) -> dict:
    x = x.double()
    q = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64)).tolist() if len(x) else []
    return {
        "n": int(len(x)),
        "mean": float(x.mean()) if len(x) else float("nan"),
        "std": float(x.std()) if len(x) > 1 else 0.0,
        "min": float(x.min()) if len(x) else float("nan"),
        "max": float(x.max()) if len(x) else float("nan"),
        "quantiles": {f"{p:g}": v for p, v in zip(QUANTILES, q)},
    }


def output_transform(task: str, loss_kind: Optional[str], target_mean: float, target_std: float):
    """Maps raw network outputs to the critic's scores (what ``TrainedCritic.score`` returns)."""
    if task == "pointwise" and loss_kind == "bce":
        return torch.sigmoid, (0.0, 1.0)
    if task == "pointwise":
        return (lambda r: r * target_std + target_mean), (-math.inf, math.inf)
    return (lambda r: r), (-math.inf, math.inf)


def _calibration(net: RewardNet, data: CriticData, task: str, loss_kind: Optional[str]) -> tuple[dict, dict]:
    """Score statistics of the trained critic on the validation set, and validation metrics."""
    if not data.val_rows:
        return {}, {}
    tf, _ = output_transform(task, loss_kind, data.target_mean, data.target_std)
    ds = data.dataset(data.val_rows)
    batch = collate([ds[i] for i in range(len(ds))])
    prompts = batch["prompt"]
    if task == "pairwise":
        rc = tf(predict(net, batch["chosen"], prompts))
        rr = tf(predict(net, batch["rejected"], prompts))
        scores = torch.cat([rc, rr])
        metrics = {"pairwise_accuracy": float((rc > rr).float().mean() + 0.5 * (rc == rr).float().mean()),
                   "mean_margin": float((rc - rr).mean()), "n_pairs": len(prompts)}
        cal = {"all": _stats(scores), "chosen": _stats(rc), "rejected": _stats(rr)}
    else:
        s = tf(predict(net, batch["image"], prompts))
        ref = batch["target"]
        if data.target == "score":
            ref = ref * data.target_std + data.target_mean
        metrics = {"spearman": spearman(s.tolist(), ref.tolist()), "n": len(prompts)}
        if loss_kind == "bce":
            metrics["accuracy"] = float(((s > 0.5).float() == ref).float().mean())
        cal = {"all": _stats(s)}
    return cal, metrics


def _seed_everything(seed: int) -> None:
    import lightning as L

    L.seed_everything(int(seed), workers=True, verbose=False)


def _fit(cfg: dict, data: CriticData, module, out: Path, monitor: str) -> tuple[str, float]:
    """Run Lightning's Trainer; returns (best checkpoint path, seconds)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    t = cfg["train"]
    has_val = bool(data.val_rows)
    ckpt = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=monitor if has_val else None,
                           mode=_mode(monitor), save_top_k=1, save_last=False)
    callbacks = [ckpt]
    if t["patience"] is not None and int(t["patience"]) > 0 and data.val_rows:
        callbacks.append(EarlyStopping(monitor=monitor, mode=_mode(monitor), patience=int(t["patience"]),
                                       min_delta=float(t["min_delta"])))
    trainer = L.Trainer(
        max_epochs=int(t["epochs"]),
        max_steps=int(t["max_steps"]),
        max_time=t["max_time"],
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        precision=t["precision"],
        callbacks=callbacks,
        logger=_loggers(t["logger"], out) or False,
        log_every_n_steps=int(t["log_every_n_steps"]),
        enable_progress_bar=bool(t["progress_bar"]),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out),
        limit_val_batches=1.0 if data.val_rows else 0,
    )
    dm = _make_datamodule(data, int(t["batch_size"]), int(t["num_workers"]))
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return ckpt.best_model_path, time.perf_counter() - t0


def _load_best(module, best: str) -> None:
    if best and os.path.isfile(best):
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)


def _save_state(state: dict, path: Path, dtype: str) -> None:
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
    for section in ("validation", "calibration", "training_data", "training", "distill", "figures", "warnings"):
        if section in extra and extra[section]:
            lines += [f"## {section.replace('_', ' ')}", "", "```json", json.dumps(extra[section], indent=2), "```", ""]
    return "\n".join(lines)


def write_card_files(folder: Path, info: dict) -> None:
    (folder / "critic.json").write_text(json.dumps(info, indent=2, default=float))
    (folder / "card.md").write_text(card_markdown(info))


def _clean_cfg(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _export(out: Path, dest: Optional[str], files: Sequence[str]) -> Optional[Path]:
    if not dest:
        return None
    d = Path(dest)  # relative to the working directory, like ``output``
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        if (out / f).is_file():
            shutil.copyfile(out / f, d / f)
            os.chmod(d / f, 0o644)  # safetensors writes 0600; package data must be world-readable
    return d


def _init_config(init_from: str, task: str, data: CriticData) -> tuple[dict, dict]:
    """Network config of the critic to fine-tune (its architecture and vocabulary are kept)."""
    from milr.critics.trained import read_info, resolve_checkpoint

    folder = resolve_checkpoint(init_from)
    info = read_info(folder)
    if info["task"] not in ("pairwise", "pointwise"):
        raise ValueError(f"model.init_from: {folder} is a {info['task']} critic; only reward models can be fine-tuned here")
    cfg = {k: v for k, v in info["network"].items() if not k.startswith("_")}
    if cfg.get("clip_model") and (folder / str(cfg["clip_model"])).is_file():
        cfg["clip_model"] = str(folder / str(cfg["clip_model"]))
    if int(cfg["image_size"]) != data.image_size:
        raise ValueError(f"model.init_from: {folder} was trained on {cfg['image_size']} px images, the data has {data.image_size} px")
    note = {"init_from": str(folder), "init_task": info["task"]}
    if "vocab" in cfg:
        known = set(cfg["vocab"])
        unknown = sorted({w for p in data.prompts() for w in split_words(p)} - known)
        if unknown:
            log.warning("model.init_from: %d words of the data are not in the critic's vocabulary (read as <unk>): %s",
                        len(unknown), unknown[:10])
            note["unknown_words"] = unknown[:50]
    return cfg, note


def _train_reward(cfg: dict, out: Path, extra_card: Optional[dict] = None) -> Path:
    """Pairwise / pointwise training; writes the checkpoint folder and returns it."""
    _seed_everything(cfg["train"]["seed"])
    data = CriticData(cfg)
    task = data.task
    loss_kind = cfg["loss"] or ("bce" if data.target == "label" else "mse") if task == "pointwise" else None
    if task == "pointwise" and loss_kind == "bce" and data.target == "score":
        raise ValueError("loss bce needs 0/1 'label' targets; use loss: mse for 'score' targets")
    m = cfg["model"]
    net_cfg = {k: m[k] for k in ("backbone", "width", "depth", "stem", "text_encoder", "text_dim", "text_layers", "max_words",
                                 "clip_model", "clip_pretrained", "finetune", "head_hidden", "dropout")}
    net_cfg["image_size"] = data.image_size
    if m["backbone"] == "cnn" and m["text_encoder"] != "clip":
        net_cfg["vocab"] = WordTokenizer.build(data.prompts(), int(m["max_words"])).vocab
    init_note = None
    if m["init_from"]:
        net_cfg, init_note = _init_config(m["init_from"], task, data)
    net = RewardNet(net_cfg)
    if m["init_from"]:
        from safetensors.torch import load_file

        from milr.critics.trained import resolve_checkpoint

        state = load_file(str(resolve_checkpoint(m["init_from"]) / "model.safetensors"))
        expected = net.state_dict()
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    t = cfg["train"]
    module = _make_module(task, net, loss_kind, float(t["lr"]), float(t["weight_decay"]), int(t["epochs"]))
    monitor = t["monitor"] or "val_loss"
    if task == "pointwise" and monitor == "val_acc" and loss_kind != "bce":
        raise ValueError("train.monitor val_acc needs binary labels; use val_loss or val_spearman")
    best, seconds = _fit(cfg, data, module, out, monitor)
    _load_best(module, best)
    net.eval()
    warnings_ = data.warnings + _check_stall(task, module.history)
    cal, val_metrics = _calibration(net, data, task, loss_kind)
    _, rng = output_transform(task, loss_kind, data.target_mean, data.target_std)
    _save_state(net.state_dict(), out / "model.safetensors", t["weights_dtype"])
    extra_files: list[str] = []
    if net_cfg.get("clip_model") and _open_clip_model_cfg(net_cfg["clip_model"]) is not None:
        # Keep the checkpoint self-contained: its open_clip architecture travels with it (weights are in
        # model.safetensors), so the folder loads after the original config file is gone.
        clip_file = f"{cfg['name']}-clip.json"
        (out / clip_file).write_text(json.dumps(_open_clip_model_cfg(net_cfg["clip_model"]), indent=2))
        net_cfg = {**net_cfg, "clip_model": clip_file, "clip_pretrained": None}
        extra_files.append(clip_file)
    n_params = sum(p.numel() for p in net.parameters())
    prompt_enc = "open_clip text tower" if net.text_kind == "clip" else (
        f"{'word transformer' if net.text_kind == 'words' else 'bag of words'} over a {len(net_cfg['vocab'])}-word vocabulary")
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
        "parameters": int(n_params),
        "card": {
            "summary": cfg["description"] or f"Trained {task} critic '{cfg['name']}' ({m['backbone']} backbone)",
            "score_range": list(rng),
            "higher_is_better": True,
            "differentiable": True,
            "input_size": data.image_size,
            "max_text_tokens": int(m["max_words"]) if net.text_kind != "clip" else getattr(net, "clip_context", 77),
            "cost": "cheap",
            "weights": "model.safetensors in this folder",
            "reference": "Bradley-Terry reward model (TRL RewardTrainer; ImageReward, arXiv 2304.05977)" if task == "pairwise"
            else "pointwise reward regression",
            "extra": {
                "validation": val_metrics,
                "calibration": cal,
                "training_data": data.summary(),
                "training": {"epochs_run": len(module.history), "history": module.history, "seconds": round(seconds, 1),
                             "best_checkpoint": os.path.relpath(best, out) if best else None, "monitor": monitor,
                             **(init_note or {})},
                "warnings": warnings_,
                **(extra_card or {}),
            },
        },
    }
    write_card_files(out, info)
    return out


def _train_contrastive(cfg: dict, out: Path) -> Path:
    """Contrastive CLIP training; writes an open_clip folder plus critic.json/card.md."""
    _seed_everything(cfg["train"]["seed"])
    data = CriticData(cfg)
    m = cfg["model"]
    model, tokenizer, pp, model_cfg = _clip_from_config(m)
    if m["preprocess"]:
        pp = {**pp, **m["preprocess"]}
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()  # load_open_clip hands it over in eval mode
    model._milr_pp = pp  # used by the module's loss; not saved
    t = cfg["train"]
    module = _make_module("contrastive", model, None, float(t["lr"]), float(t["weight_decay"]), int(t["epochs"]),
                          tokenizer=tokenizer)
    monitor = t["monitor"] or "val_loss"
    best, seconds = _fit(cfg, data, module, out, monitor)
    _load_best(module, best)
    model.eval()
    pp_save = {k: v for k, v in pp.items() if k in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp_save}, indent=2))
    (out / f"{cfg['name']}.json").write_text(json.dumps(model_cfg, indent=2))
    _save_state(model.state_dict(), out / "open_clip_model.safetensors", t["weights_dtype"])
    cal: dict = {}
    if data.val_rows:
        ds = data.dataset(data.val_rows)
        batch = collate([ds[i] for i in range(len(ds))])
        from milr.critics.clip_score import preprocess_tensor

        with torch.no_grad():
            img = F.normalize(model.encode_image(preprocess_tensor(batch["image"], pp)).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokenizer(batch["prompt"])).float(), dim=-1)
        cos = (img * txt).sum(-1)
        cal = {"matched_cosine": _stats(cos), "mismatched_cosine": _stats((img @ txt.t())[~torch.eye(len(cos), dtype=torch.bool)])}
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
                "training_data": data.summary(),
                "training": {"epochs_run": len(module.history), "history": module.history, "seconds": round(seconds, 1),
                             "monitor": monitor, "started_from": {"clip_model": m["clip_model"], "clip_pretrained": m["clip_pretrained"]}
                             if m["clip_model"] else "random initialisation"},
                "warnings": data.warnings,
            },
        },
    }
    write_card_files(out, info)
    return out


# =============================================================================================
# Distillation
# =============================================================================================
def build_teacher(spec: dict, model_spec: Optional[dict] = None, device: str = "cpu"):
    """A critic from ``{name: ..., **args}``, or an ensemble from ``{critics: [...], combine: {...}}``.

    Built the way the recipe runner builds critics (:func:`milr.runner.build_critic`).
    """
    from milr.recipe import ComponentSpec, CriticSpec
    from milr.registry import MODELS
    from milr.runner import build_critic

    model = None
    if model_spec:
        ms = ComponentSpec(**model_spec)
        model = MODELS.build(ms.name, **ms.args)
    if "critics" in spec:
        from milr.critics.ensemble import Ensemble

        specs = [CriticSpec(**c) for c in spec["critics"]]
        members = [build_critic(s, model, device) for s in specs]
        names = [s.name if [x.name for x in specs].count(s.name) == 1 else f"{s.name}#{i}" for i, s in enumerate(specs)]
        return Ensemble(members=members, weights=[s.weight for s in specs], names=names, **(spec.get("combine") or {}))
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
        from milr.world_data import world_images

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
            raise ValueError(f"{r['_line']}: distillation images need 'prompt' and 'image'")
        p = Path(r["image"]) if os.path.isabs(r["image"]) else root / r["image"]
        with Image.open(p) as im:
            ex.append({"prompt": r["prompt"], "metadata": r.get("metadata") or {}, "image": np.asarray(im.convert("RGB"))})
    random.Random(int(d["seed"])).shuffle(ex)
    n_test = min(int(d["n_test"]), len(ex) // 4)
    if n_test < 3:
        raise ValueError(f"{d['source']}: too few images ({len(ex)}) to hold some out for the rank agreement")
    return ex[n_test:], ex[:n_test]


def _train_distill(cfg: dict, out: Path) -> Path:
    from milr.world_data import save_examples

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
    student_cfg["data"].update({"train": str(train_file), "val": None, "image_root": str(data_dir), "target": "score"})
    _train_reward(student_cfg, out)
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


def _generate_world_data(cfg: dict, folder: Path) -> None:
    """``data.generate``: write MiniMUG world data (TRAIN-split prompts) and point data.train/val at it."""
    from milr import world_data

    g = dict(cfg["data"]["generate"])
    unknown = set(g) - {"format", "n", "n_val", "seed", "tags", "source", "kind_weights"}
    if unknown:
        raise ValueError(f"data.generate: unknown keys {sorted(unknown)} (allowed: format, n, n_val, seed, tags, kind_weights)")
    if g.get("source", "world") != "world":
        raise ValueError("data.generate.source: only 'world' (MiniMUG's scene world) is built in")
    want = {"pairwise": "pairwise", "pointwise": "pointwise", "contrastive": "captions"}.get(cfg["task"])
    fmt = g.get("format", want)
    if fmt != want:
        raise ValueError(f"data.generate.format {fmt!r} does not fit task {cfg['task']!r} (expected {want!r})")
    writer = {"pairwise": world_data.write_pairwise, "pointwise": world_data.write_pointwise,
              "captions": world_data.write_captions}[fmt]
    seed, tags = int(g.get("seed", 0)), g.get("tags")
    extra = {}
    if g.get("kind_weights"):
        if fmt != "pairwise":
            raise ValueError("data.generate.kind_weights applies to pairwise data only")
        extra["kind_weights"] = dict(g["kind_weights"])
    train = writer(folder, int(g.get("n", 2000)), "train", tags, seed, file_name="train.jsonl", **extra)
    cfg["data"]["train"] = str(train)
    cfg["data"]["image_root"] = str(folder)
    if int(g.get("n_val", 0)) > 0:
        # Validation keeps the world's uniform mix of near misses, so it stays comparable across stages.
        cfg["data"]["val"] = str(writer(folder, int(g["n_val"]), "train", tags, seed + 1, file_name="val.jsonl"))


# =============================================================================================
# Entry point
# =============================================================================================
DEPLOY_FILES = ("model.safetensors", "open_clip_model.safetensors", "open_clip_config.json", "critic.json", "card.md")


def train_critic(recipe: Union[str, Path, dict], overrides: Union[Sequence[str], dict, None] = None) -> Path:
    """Train a critic from a recipe (path, shipped name, or dict) and return its checkpoint folder.

    ``overrides``: dotted ``key=value`` strings (``train.epochs=3``) or a nested dict. The folder is
    ready for ``{name: trained, path: <folder>}``; with ``export:`` the deployable files are also
    copied to that folder.
    """
    import yaml

    cfg = load_train_recipe(recipe, overrides)
    out = Path(cfg["output"])  # relative to the working directory, like a run's output_dir
    out.mkdir(parents=True, exist_ok=True)
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    if cfg["data"]["generate"]:
        _generate_world_data(cfg, out / "data")
    (out / "recipe.yaml").write_text(yaml.safe_dump(_clean_cfg(cfg), sort_keys=False))
    if cfg["task"] == "contrastive":
        _train_contrastive(cfg, out)
    elif cfg["task"] == "distill":
        _train_distill(cfg, out)
    else:
        _train_reward(cfg, out)
    info = json.loads((out / "critic.json").read_text())
    deploy = DEPLOY_FILES + (f"{cfg['name']}.json",) + tuple(info.get("files", ()))
    if cfg["aliases"]:
        info["aliases"] = list(cfg["aliases"])
        write_card_files(out, info)
        log.info("register it by name: add to your critics.yaml: %s",
                 "; ".join(f"{a}: {{path: {out.resolve()}}}" for a in cfg["aliases"]))
    _export(out, cfg["export"], deploy)
    return out


__all__ = ["train_critic", "load_train_recipe", "RewardNet", "WordTokenizer", "build_teacher", "read_jsonl", "predict"]
