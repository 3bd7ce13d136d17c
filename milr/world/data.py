"""Datasets from MiniMUG's scene world, written as JSONL + PNG folders for ``milr train-critic``.

Three formats, the ones :mod:`milr.training` reads (image paths are relative to the JSONL's
folder):

* **pairwise** -- ``{"prompt", "chosen", "rejected", "tag", "metadata"}`` (plus ``"kind"`` when
  drawn with ``kind_weights``): a world prompt,
  an image that follows it (``sample_scene_for``) and a near miss that does not
  (``sample_scene_violating``: a missing object, a count off by one, a wrong or swapped colour, a
  wrong relation), as in the preference data of ImageReward (Xu et al. 2023, arXiv 2304.05977)
  and TRL's RewardTrainer (chosen/rejected), with the preference decided by GenEval's rules
  (Ghosh et al. 2023) instead of human raters;
* **pointwise** -- ``{"prompt", "image", "label", "score", "tag", "metadata"}``: half follow, half
  violate; ``label`` is the GenEval verdict (0/1) and ``score`` the fraction of GenEval sub-checks
  passed (1.0 exactly when the label is 1);
* **captions** -- ``{"image", "caption", "tag"}``: an image rendered for a prompt, captioned by that
  prompt, for contrastive CLIP training (Radford et al. 2021).

``split="train"`` uses only prompts whose combination the MiniMUG suite does not hold out
(``milr.world.suite.is_train_prompt``), so critics trained on this data are judged on
TEST-split prompts they never saw. Everything is seeded: the same arguments write the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .prompts import TAGS
from .scenes import VIOLATION_KINDS, render, sample_scene_for, sample_scene_violating, truth, truth_result
from .suite import SPLITS, split_prompts


def _check(n: int, split: str, tags: Optional[Sequence[str]]) -> list[str]:
    if int(n) < 1:
        raise ValueError(f"number of examples must be >= 1, got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tags = list(TAGS) if tags is None else list(tags)
    unknown = [t for t in tags if t not in TAGS]
    if unknown or not tags:
        raise ValueError(f"unknown tags {unknown or tags}; known: {TAGS}")
    return tags


class _PromptPool:
    """Distinct prompts of each tag usable in a split, sampled uniformly (tag first, then prompt)."""

    def __init__(self, split: str, tags: Sequence[str], tag_weights: Optional[dict[str, float]] = None):
        self.tags = list(tags)
        self.prompts = {t: split_prompts(t, split) for t in self.tags}
        empty = [t for t, ps in self.prompts.items() if not ps]
        if empty:
            raise ValueError(f"no {split} prompts for tags {empty}")
        w = np.array([float((tag_weights or {}).get(t, 1.0)) for t in self.tags])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"tag weights must be >= 0 and not all 0, got {tag_weights}")
        self.p = w / w.sum()

    def sample(self, rng: np.random.Generator) -> dict:
        tag = self.tags[int(rng.choice(len(self.tags), p=self.p))]
        ps = self.prompts[tag]
        return dict(ps[int(rng.integers(len(ps)))])


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, optimize=False, compress_level=1)


def _write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def applicable_kinds(md: dict, cache: dict[str, list[str]]) -> list[str]:
    """Violation kinds that apply to a prompt (the world raises ValueError for the others)."""
    if md["prompt"] not in cache:
        ok = []
        for k in VIOLATION_KINDS:
            try:
                sample_scene_violating(md, np.random.default_rng(0), kind=k)
                ok.append(k)
            except (ValueError, RuntimeError):
                pass
        cache[md["prompt"]] = ok
    return cache[md["prompt"]]


def write_pairwise(
    out_dir: str | Path,
    n: int,
    split: str = "train",
    tags: Optional[Sequence[str]] = None,
    seed: int = 0,
    file_name: str = "pairs.jsonl",
    kind_weights: Optional[dict[str, float]] = None,
) -> Path:
    """Write ``n`` preference pairs; returns the JSONL path (images under ``out_dir/images``).

    ``kind_weights`` (e.g. ``{swap_colors: 3}``, others 1) draws the kind of near miss among those
    that apply to the prompt with these weights (default: the world's uniform choice) -- hard
    negatives for a second training stage.
    """
    tags = _check(n, split, tags)
    unknown = set(kind_weights or {}) - set(VIOLATION_KINDS)
    if unknown:
        raise ValueError(f"unknown violation kinds {sorted(unknown)}; known: {VIOLATION_KINDS}")
    out = Path(out_dir)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 1])
    pool = _PromptPool(split, tags)
    rows = []
    stem = Path(file_name).stem
    kinds_cache: dict[str, list[str]] = {}
    for i in range(int(n)):
        md = pool.sample(rng)
        good = sample_scene_for(md, rng)
        kind = None
        if kind_weights:
            kinds = applicable_kinds(md, kinds_cache)
            w = np.array([float(kind_weights.get(k, 1.0)) for k in kinds])
            kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        bad = sample_scene_violating(md, rng, kind=kind)
        # Both verdicts are re-checked: a pair with the preference the wrong way round would
        # teach the reward model the opposite of what the file says.
        if not truth(good, md) or truth(bad, md):
            raise RuntimeError(f"world sampler broke its contract on {md['prompt']!r}")
        c, r = f"images/{stem}_{i:06d}_c.png", f"images/{stem}_{i:06d}_r.png"
        _save_png(render(good), out / c)
        _save_png(render(bad), out / r)
        row = {"prompt": md["prompt"], "chosen": c, "rejected": r, "tag": md["tag"], "metadata": md}
        if kind is not None:
            row["kind"] = kind
        rows.append(row)
    return _write_jsonl(rows, out / file_name)


def write_pointwise(
    out_dir: str | Path,
    n: int,
    split: str = "train",
    tags: Optional[Sequence[str]] = None,
    seed: int = 0,
    follow_fraction: float = 0.5,
    file_name: str = "points.jsonl",
) -> Path:
    """Write ``n`` scored images; returns the JSONL path."""
    tags = _check(n, split, tags)
    if not 0.0 <= follow_fraction <= 1.0:
        raise ValueError(f"follow_fraction must be in [0, 1], got {follow_fraction}")
    out = Path(out_dir)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 2])
    pool = _PromptPool(split, tags)
    rows = []
    stem = Path(file_name).stem
    for i in range(int(n)):
        md = pool.sample(rng)
        follow = bool(rng.random() < follow_fraction)
        scene = sample_scene_for(md, rng) if follow else sample_scene_violating(md, rng)
        res = truth_result(scene, md)
        p = f"images/{stem}_{i:06d}.png"
        _save_png(render(scene), out / p)
        rows.append(
            {"prompt": md["prompt"], "image": p, "label": int(res.correct), "score": float(res.partial),
             "tag": md["tag"], "metadata": md}
        )
    return _write_jsonl(rows, out / file_name)


# Colour-bearing tags are drawn more often: they are the only captions that name colours.
CAPTION_TAG_WEIGHTS = {"single_object": 1.0, "colors": 3.0, "two_object": 1.0, "counting": 1.0, "position": 1.0,
                       "color_attr": 2.0}


def write_captions(
    out_dir: str | Path,
    n: int,
    split: str = "train",
    tags: Optional[Sequence[str]] = None,
    seed: int = 0,
    tag_weights: Optional[dict[str, float]] = None,
    file_name: str = "captions.jsonl",
) -> Path:
    """Write ``n`` (image, caption) pairs: an image that follows a prompt, captioned by it."""
    tags = _check(n, split, tags)
    out = Path(out_dir)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 3])
    pool = _PromptPool(split, tags, CAPTION_TAG_WEIGHTS if tag_weights is None else tag_weights)
    rows = []
    stem = Path(file_name).stem
    for i in range(int(n)):
        md = pool.sample(rng)
        scene = sample_scene_for(md, rng)
        p = f"images/{stem}_{i:06d}.png"
        _save_png(render(scene), out / p)
        rows.append({"image": p, "caption": md["prompt"], "tag": md["tag"]})
    return _write_jsonl(rows, out / file_name)


def world_images(
    n: int, split: str = "train", tags: Optional[Sequence[str]] = None, seed: int = 0, follow_fraction: float = 0.5
) -> list[dict[str, Any]]:
    """In-memory examples ``{"prompt", "metadata", "image" (uint8 [32, 32, 3]), "label"}``.

    Used by distillation, which scores the images with a teacher before writing them.
    """
    tags = _check(n, split, tags)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 4])
    pool = _PromptPool(split, tags)
    out = []
    for _ in range(int(n)):
        md = pool.sample(rng)
        follow = bool(rng.random() < follow_fraction)
        scene = sample_scene_for(md, rng) if follow else sample_scene_violating(md, rng)
        out.append({"prompt": md["prompt"], "metadata": md, "image": render(scene),
                    "label": int(truth(scene, md))})
    return out


def save_examples(examples: list[dict[str, Any]], out_dir: str | Path, file_name: str, extra_keys: Sequence[str] = ()) -> Path:
    """Write in-memory examples (``image`` uint8 HWC arrays) as PNGs plus a JSONL."""
    out = Path(out_dir)
    stem = Path(file_name).stem
    rows = []
    for i, ex in enumerate(examples):
        p = f"images/{stem}_{i:06d}.png"
        _save_png(np.asarray(ex["image"], dtype=np.uint8), out / p)
        row = {"prompt": ex["prompt"], "image": p}
        for k in ("metadata", *extra_keys):
            if k in ex:
                row[k] = ex[k]
        rows.append(row)
    return _write_jsonl(rows, out / file_name)


__all__ = ["write_pairwise", "write_pointwise", "write_captions", "world_images", "save_examples"]
