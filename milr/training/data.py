"""Preference and score data for ``milr train-critic``: formats, checks and a split that does not leak.

Formats (``data.format``, default from the path): JSONL, CSV/TSV, Parquet, an image folder (the
Hugging Face ``imagefolder`` convention: images next to a ``metadata.jsonl``/``.csv``/``.parquet``
whose ``file_name`` column names them), or a dataset saved with ``datasets``' ``save_to_disk``
(read offline with ``load_from_disk``; image columns may hold decoded images, bytes or paths).
``data.columns`` maps the names used here to the data's own (``{chosen: image_0}``).

Rows, by task:

* pairwise -- ``prompt``, ``chosen``, ``rejected``; optional ``margin`` (a number >= 0: the
  Bradley-Terry loss becomes ``-log sigmoid(r_c - r_r - margin)``, TRL RewardTrainer's column) and
  ``tie`` (the pair's target is 1/2, as PickScore's ties, Kirstain et al. 2023). A row may instead
  be a ranked list -- ``prompt``, ``images`` (best first) and optional ``ranks`` (1 = best; equal
  ranks are not compared) -- expanded into every ordered pair, as ImageReward's training data
  (Xu et al. 2023, arXiv 2304.05977);
* pointwise -- ``prompt``, ``image``, ``score`` (a number) or ``label`` (0/1);
* contrastive -- ``image``, ``caption`` (or ``prompt``).

Validation split (``data.split: grouped``, the default): examples linked by a shared prompt or a
shared image are one group (union-find), and whole groups go to validation, so no prompt and no
image is on both sides -- a row split lets a model score well by remembering prompts and images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import lightning as L
import torch

from milr.errors import UserError

log = logging.getLogger("milr.training")

REQUIRED = {
    "pairwise": ("prompt", "chosen", "rejected"),
    "pointwise": ("prompt", "image"),
    "contrastive": ("image",),
}
IMAGE_COLUMNS = ("chosen", "rejected", "image", "images")
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_METADATA = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


class DataError(UserError, ValueError):
    """Training data that cannot be used; the message names the file, row and column."""

    kind = "data"


# =============================================================================================
# Reading
# =============================================================================================
def detect_format(path: Union[str, Path]) -> str:
    p = Path(path)
    if p.is_dir():
        if any((p / m).is_file() for m in _DATASET_MARKERS):
            return "hf"
        if any((p / m).is_file() for m in _METADATA):
            return "folder"
        raise DataError(f"{p}: a folder must be an image folder (with {' or '.join(_METADATA)}) "
                        f"or a dataset saved with datasets' save_to_disk ({' or '.join(_DATASET_MARKERS)})")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if not p.exists():
        raise FileNotFoundError(f"data file {p} does not exist")
    raise DataError(f"{p}: unknown data format {suffix!r}; use .jsonl, .csv, .tsv, .parquet, an image folder or a "
                    f"saved dataset, or set data.format")


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
                raise DataError(f"{path}:{i}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, found {type(row).__name__}")
            row["_line"] = f"{path}:{i}"
            rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="") as f:
        # Row numbers count the header as line 1, as a spreadsheet shows them.
        return [{**r, "_line": f"{path}:{i}"} for i, r in enumerate(csv.DictReader(f, delimiter=delim), 2)]


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow, or milr[datasets])") from None
    return [{**r, "_line": f"{path}:row {i}"} for i, r in enumerate(pq.read_table(str(path)).to_pylist(), 1)]


def _read_hf(path: Path, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: a saved Hugging Face dataset needs the datasets package "
                        f"(pip install 'milr[datasets]')") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: the dataset has splits {sorted(ds)}, not {split!r} (set data.hf_split)")
        ds, where = ds[split], f"{path}[{split}]"
    else:
        where = str(path)
    return [{**r, "_line": f"{where}:row {i}"} for i, r in enumerate(ds, 1)]


def read_table(path: Union[str, Path], fmt: Optional[str] = None, split: str = "train") -> tuple[list[dict], Path]:
    """Rows (dicts with ``_line``, the place to name in errors) and the folder image paths are relative to."""
    p = Path(path)
    if fmt is None and not p.exists():
        raise FileNotFoundError(f"data file {p} does not exist")
    fmt = fmt or detect_format(p)
    if fmt == "jsonl":
        rows, root = read_jsonl(p), p.resolve().parent
    elif fmt == "csv":
        rows, root = _read_csv(p), p.resolve().parent
    elif fmt == "parquet":
        rows, root = _read_parquet(p), p.resolve().parent
    elif fmt == "hf":
        rows, root = _read_hf(p, split), p.resolve()
    else:  # image folder: metadata + images, the file_name column is the image
        meta = next((p / m for m in _METADATA if (p / m).is_file()), None)
        if meta is None:
            raise DataError(f"{p}: an image folder needs {' or '.join(_METADATA)}")
        rows, root = read_table(meta)[0], p.resolve()
        for r in rows:
            if "file_name" in r and "image" not in r:
                r["image"] = r.pop("file_name")
    if not rows:
        raise DataError(f"{p} holds no examples")
    return rows, root


def rename_columns(rows: list[dict], columns: dict[str, str]) -> None:
    """``columns``: {our name: the data's name}."""
    if not columns:
        return
    for r in rows:
        for ours, theirs in columns.items():
            if theirs in r:
                r[ours] = r.pop(theirs)


# =============================================================================================
# Checking
# =============================================================================================
def _number(r: dict, col: str, what: str = "a finite number") -> float:
    v = r[col]
    if isinstance(v, str):  # CSV cells
        try:
            v = float(v.strip())
        except ValueError:
            raise DataError(f"{r.get('_line', '?')}: column '{col}' must be {what}, got {r[col]!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise DataError(f"{r.get('_line', '?')}: '{col}' must be {what}, got {v!r}")
    return float(v)


def _flag(r: dict, col: str) -> bool:
    v = r[col]
    if isinstance(v, str):
        v = {"true": True, "false": False, "1": True, "0": False, "": False, "yes": True, "no": False}.get(v.strip().lower(), v)
    if v is None:
        return False
    if not isinstance(v, (bool, int)) or v not in (0, 1):
        raise DataError(f"{r.get('_line', '?')}: column '{col}' must be true/false (or 1/0), got {r[col]!r}")
    return bool(v)


def _list(r: dict, col: str) -> list:
    v = r[col]
    if isinstance(v, str):  # CSV: a JSON list in the cell
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DataError(f"{r.get('_line', '?')}: column '{col}' must be a list (in CSV: a JSON list), got {v!r}") from None
    if not isinstance(v, (list, tuple)):
        raise DataError(f"{r.get('_line', '?')}: column '{col}' must be a list, got {type(v).__name__}")
    return list(v)


def expand_ranked(rows: list[dict]) -> list[dict]:
    """Ranked lists to pairs (every better/worse pair of one prompt, equal ranks skipped, as ImageReward)."""
    out = []
    for r in rows:
        if "images" not in r:
            out.append(r)
            continue
        where = r.get("_line", "?")
        images = _list(r, "images")
        ranks = [_number({"ranks": x, "_line": where}, "ranks") for x in _list(r, "ranks")] if r.get("ranks") is not None \
            else list(range(1, len(images) + 1))
        if len(ranks) != len(images) or len(images) < 2:
            raise DataError(f"{where}: column 'images' needs at least 2 images and 'ranks' one rank per image "
                            f"(got {len(images)} images, {len(ranks)} ranks)")
        for i in range(len(images)):
            for j in range(len(images)):
                if ranks[i] < ranks[j]:
                    extra = {k: v for k, v in r.items() if k not in ("images", "ranks", "_line")}
                    out.append({**extra, "chosen": images[i], "rejected": images[j], "_line": f"{where} (ranks {ranks[i]:g}>{ranks[j]:g})"})
    return out


def target_key(rows: list[dict], wanted: Optional[str]) -> str:
    if wanted is not None:
        return wanted
    if all("label" in r for r in rows):
        return "label"
    if all("score" in r for r in rows):
        return "score"
    first = next((r for r in rows if "label" not in r and "score" not in r), rows[0])
    raise DataError(f"{first.get('_line', '?')}: pointwise data needs a 'label' (0/1) or a 'score' (number) in every row")


def check_rows(rows: list[dict], task: str, target: Optional[str] = None) -> list[dict]:
    """Check (and normalise) the fields of each row for ``task``; errors name the row and column."""
    for r in rows:
        where = r.get("_line", "?")
        missing = [k for k in REQUIRED[task] if r.get(k) is None]
        if task == "contrastive" and r.get("caption") is None and r.get("prompt") is None:
            missing.append("caption")
        if missing:
            raise DataError(f"{where}: missing fields {missing} for {task} data "
                            f"(expected {list(REQUIRED[task]) + (['caption'] if task == 'contrastive' else [])})")
        if task == "contrastive" and r.get("caption") is None:
            r["caption"] = r["prompt"]
        for col in ("prompt", "caption"):
            if col in r and r[col] is not None and not isinstance(r[col], str):
                raise DataError(f"{where}: column '{col}' must be text, got {type(r[col]).__name__}")
        if task == "pairwise":
            if r.get("margin") not in (None, ""):
                r["margin"] = _number(r, "margin", "a finite number")
                if r["margin"] < 0:
                    raise DataError(f"{where}: column 'margin' must be >= 0 (how much better 'chosen' is), got {r['margin']}")
            else:
                r.pop("margin", None)
            if "tie" in r:
                r["tie"] = _flag(r, "tie")
        if task == "pointwise" and target is not None:
            if r.get(target) is None:
                raise DataError(f"{where}: missing '{target}'")
            if target == "label" and isinstance(r[target], bool):
                r[target] = int(r[target])
            v = _number(r, target)
            if target == "label" and v not in (0.0, 1.0):
                raise DataError(f"{where}: 'label' must be 0 or 1, got {r[target]!r} (use 'score' for graded targets)")
            r[target] = v
    return rows


# =============================================================================================
# Images
# =============================================================================================
class ImageStore:
    """Decodes images to uint8 ``[3, S, S]`` tensors, cached in memory.

    An image reference is a path (relative to ``root``) or an in-memory image (a PIL image, bytes, or
    a ``{"bytes", "path"}`` dict as ``datasets`` stores them) registered with :meth:`ref`.
    """

    def __init__(self, root: Path, size: Optional[int], preload: bool = True):
        self.root = Path(root)
        self.size = size
        self.preload = preload
        self._cache: dict[str, torch.Tensor] = {}
        self._memory: dict[str, Any] = {}

    def ref(self, value: Any, where: str, col: str) -> str:
        """A string key for an image cell (paths stay paths)."""
        if isinstance(value, str):
            if not value.strip():
                raise DataError(f"{where}: column '{col}' is an empty image path")
            return value
        if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
            return str(value["path"])
        if isinstance(value, dict):
            value = value.get("bytes")
        if isinstance(value, (bytes, bytearray)):
            key = "mem:" + hashlib.sha1(value).hexdigest()
        elif hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
            key = "mem:" + hashlib.sha1(value.convert("RGB").tobytes() + repr(value.size).encode()).hexdigest()
        else:
            raise DataError(f"{where}: column '{col}' must be an image path, image or image bytes, got {type(value).__name__}")
        self._memory[key] = value
        return key

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def _open(self, rel: str):
        from PIL import Image

        if rel in self._memory:
            v = self._memory[rel]
            return Image.open(io.BytesIO(v)) if isinstance(v, (bytes, bytearray)) else v.copy()
        try:
            return Image.open(self.path(rel))
        except FileNotFoundError:
            raise FileNotFoundError(f"image {self.path(rel)} not found (paths are relative to data.image_root={self.root})") from None

    def load(self, rel: str) -> torch.Tensor:
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        import numpy as np
        from PIL import Image

        with self._open(rel) as im:
            im = im.convert("RGB")
            if self.size is None:
                self.size = im.size[0] if im.size[0] == im.size[1] else min(im.size)
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BICUBIC)
            t = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        if self.preload:
            self._cache[rel] = t
        return t

    def file_hash(self, rel: str) -> str:
        if rel in self._memory:
            return rel
        return hashlib.sha1(self.path(rel).read_bytes()).hexdigest()


def register_images(rows: list[dict], store: ImageStore) -> None:
    """Replace in-memory image cells by store keys (paths are kept)."""
    for r in rows:
        for col in IMAGE_COLUMNS:
            if col not in r or r[col] is None:
                continue
            if col == "images":
                r[col] = [store.ref(v, r.get("_line", "?"), col) for v in _list(r, col)]
            else:
                r[col] = store.ref(r[col], r.get("_line", "?"), col)


# =============================================================================================
# Splits
# =============================================================================================
def _group_keys(r: dict) -> Iterable[tuple[str, str]]:
    p = r.get("prompt", r.get("caption"))
    if p is not None:
        yield ("prompt", str(p))
    for col in ("chosen", "rejected", "image"):
        if r.get(col) is not None:
            yield ("image", str(r[col]))


def groups(rows: Sequence[dict]) -> list[list[int]]:
    """Connected components of rows linked by a shared prompt or image (union-find)."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        for key in _group_keys(r):
            j = owner.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[a] = b
    comps: dict[int, list[int]] = {}
    for i in range(len(rows)):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def split_rows(rows: list[dict], fraction: float, seed: int, how: str = "grouped", where: str = "data") -> tuple[list[dict], list[dict], dict]:
    """(train, validation, a description of the split); ``how``: grouped (no shared prompt/image) or random."""
    n_val = max(1, int(round(len(rows) * fraction))) if fraction else 0
    if n_val == 0:
        return rows, [], {"how": "none"}
    if n_val >= len(rows):
        raise DataError(f"{where}: {len(rows)} examples are too few to hold out {n_val} for validation")
    rng = random.Random(int(seed))
    if how == "random":
        order = list(range(len(rows)))
        rng.shuffle(order)
        val_idx = set(order[:n_val])
        info: dict = {"how": "random rows"}
    else:
        comps = groups(rows)
        rng.shuffle(comps)
        val_idx, left = set(), n_val
        # Whole groups, first fit: the validation set reaches its size exactly when small groups allow.
        for c in comps:
            if len(c) <= left:
                val_idx.update(c)
                left -= len(c)
            if left == 0:
                break
        if not val_idx:
            smallest = min(comps, key=len)
            if len(smallest) == len(rows):
                raise DataError(f"{where}: every example shares a prompt or an image with another, so no validation "
                                f"set can be held out without leaking; give data.val or data.split: random")
            val_idx.update(smallest)
        info = {"how": "grouped by shared prompts and images", "groups": len(comps)}
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    info.update(leak_report(train, val))
    return train, val, info


def leak_report(train: Sequence[dict], val: Sequence[dict]) -> dict:
    """How many validation examples share a prompt / an image with training (0 and 0 for a clean split)."""
    tp = {k for r in train for k in _group_keys(r) if k[0] == "prompt"}
    ti = {k for r in train for k in _group_keys(r) if k[0] == "image"}
    return {"val_sharing_prompt": sum(any(k in tp for k in _group_keys(r)) for r in val),
            "val_sharing_image": sum(any(k in ti for k in _group_keys(r)) for r in val)}


# =============================================================================================
# Datasets
# =============================================================================================
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
            return {"prompt": r["prompt"], "chosen": self.store.load(r["chosen"]), "rejected": self.store.load(r["rejected"]),
                    "margin": torch.tensor(float(r.get("margin") or 0.0)), "tie": torch.tensor(bool(r.get("tie", False)))}
        if self.task == "pointwise":
            y = float(r[self.target])
            if self.target == "score":
                y = (y - self.mean) / self.std
            return {"prompt": r["prompt"], "image": self.store.load(r["image"]), "target": torch.tensor(y)}
        return {"prompt": r["caption"], "image": self.store.load(r["image"])}


def collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {"prompt": [it["prompt"] for it in items]}
    for k in ("chosen", "rejected", "image"):
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items]).float().div_(255.0)
    for k in ("target", "margin"):
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items]).float()
    if "tie" in items[0]:
        out["tie"] = torch.stack([it["tie"] for it in items])
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
            raise DataError(
                f"all {same} pairs have identical chosen and rejected images: nothing to learn (the Bradley-Terry loss "
                f"would stay at ln 2 = 0.693). Check that 'chosen' and 'rejected' point to different images."
            )
        warnings_.append(f"dropped {same} of {len(rows)} pairs whose chosen and rejected images are identical")
    seen = {(r["prompt"], r["chosen"], r["rejected"]) for r in kept if not r.get("tie")}
    flipped = sum((r["prompt"], r["rejected"], r["chosen"]) in seen for r in kept if not r.get("tie"))
    if flipped:
        warnings_.append(
            f"{flipped} pairs also appear with chosen and rejected swapped; contradictory pairs pull the loss to 0.693"
        )
    for w in warnings_:
        log.warning(w)
    return kept, warnings_


class CriticData:
    """Rows, splits and loaders for one training run (see :class:`CriticDataModule`)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        task = "pointwise" if cfg["task"] == "distill" else cfg["task"]
        self.task = task
        d = cfg["data"]
        train_rows, root = self._read(d["train"], d["hf_split"] or "train")
        root = Path(d["image_root"]) if d["image_root"] else root
        self.store = ImageStore(root, d["image_size"], bool(d["preload"]))
        self.target = target_key(train_rows, d["target"]) if task == "pointwise" else None
        train_rows = self._prepare(train_rows)
        self.split_info: dict = {}
        if d["val"]:
            val_rows = self._prepare(self._read(d["val"], "validation")[0])
            self.split_info = {"how": f"given file {d['val']}", **leak_report(train_rows, val_rows)}
        else:
            train_rows, val_rows, self.split_info = split_rows(train_rows, float(d["val_fraction"]), int(cfg["train"]["seed"]),
                                                               d["split"], str(d["train"]))
        if self.split_info.get("val_sharing_prompt") or self.split_info.get("val_sharing_image"):
            log.warning("validation: %d examples share a prompt and %d an image with training; the validation "
                        "accuracy is optimistic", self.split_info["val_sharing_prompt"], self.split_info["val_sharing_image"])
        if d["max_examples"]:
            train_rows = train_rows[: int(d["max_examples"])]
        self.test_rows = self._prepare(self._read(d["test"], "test")[0]) if d["test"] else []
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

    def _read(self, ref: str, split: str) -> tuple[list[dict], Path]:
        d = self.cfg["data"]
        rows, root = read_table(ref, d["format"], split)
        rename_columns(rows, d["columns"])
        return rows, root

    def _prepare(self, rows: list[dict]) -> list[dict]:
        if self.task == "pairwise":
            register_images(rows, self.store)
            rows = expand_ranked(rows)
        rows = check_rows(rows, self.task, self.target)
        if self.task != "pairwise":
            register_images(rows, self.store)
        return rows

    def dataset(self, rows: list[dict]) -> RowsDataset:
        return RowsDataset(rows, self.task, self.store, self.target, self.target_mean, self.target_std)

    def batch(self, rows: list[dict]) -> dict:
        """All of ``rows`` as one collated batch (validation and test scoring)."""
        ds = self.dataset(rows)
        return collate([ds[i] for i in range(len(ds))])

    def prompts(self) -> list[str]:
        return [r.get("prompt", r.get("caption", "")) for r in self.train_rows]

    def summary(self) -> dict:
        def tags(rows):
            out: dict[str, int] = {}
            for r in rows:
                md = r.get("metadata")
                t = r.get("tag") or (md.get("tag") if isinstance(md, dict) else None)
                if t:
                    out[t] = out.get(t, 0) + 1
            return dict(sorted(out.items()))

        d = self.cfg["data"]
        s = {
            "format": self.task,
            "train_file": d["train"],
            "val_file": d["val"] or f"{d['val_fraction']:g} of train (seed {self.cfg['train']['seed']}, {d['split']} split)",
            "train_examples": len(self.train_rows),
            "val_examples": len(self.val_rows),
            "distinct_train_prompts": len({r.get("prompt", r.get("caption")) for r in self.train_rows}),
            "image_size": self.image_size,
            "split": self.split_info,
        }
        if self.test_rows:
            s["test_file"], s["test_examples"] = d["test"], len(self.test_rows)
        if self.task == "pairwise":
            ties = sum(bool(r.get("tie")) for r in self.train_rows)
            margins = sum("margin" in r for r in self.train_rows)
            if ties or margins:
                s["ties"], s["with_margin"] = ties, margins
        if tags(self.train_rows):
            s["train_tags"] = tags(self.train_rows)
        if self.target:
            s["target"] = self.target
            if self.target == "score":
                s["target_mean"], s["target_std"] = self.target_mean, self.target_std
            else:
                s["positive_fraction"] = sum(float(r["label"]) for r in self.train_rows) / len(self.train_rows)
        return s


class CriticDataModule(L.LightningDataModule):
    """Train/validation loaders over :class:`CriticData` (train shuffled, validation in order)."""

    def __init__(self, data: CriticData, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.data, self.batch_size, self.num_workers = data, int(batch_size), int(num_workers)

    def _loader(self, rows: list[dict], train: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.data.dataset(rows), batch_size=self.batch_size, shuffle=train,
                                           collate_fn=collate, num_workers=self.num_workers,
                                           drop_last=train and len(rows) > self.batch_size)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.data.train_rows, True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.data.val_rows, False)


__all__ = ["CriticData", "DataError", "read_table", "read_jsonl", "check_rows", "expand_ranked", "split_rows", "groups",
           "leak_report", "ImageStore", "collate", "CriticDataModule"]
