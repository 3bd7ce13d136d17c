"""WISE (Niu et al. 2025, arXiv 2503.07265, github.com/PKU-YuanGroup/WISE), legacy protocol: suite, layout, aggregation.

Suite ``wise``: the 1000 legacy prompts shipped in ``milr/data/wise`` (licence unspecified
upstream; research evaluation only, see SOURCE.md). Split ``legacy`` (``test`` is accepted, the
recipes' default) or ``rewrite`` (the same ids, prompts that state the answer). Each item keeps
WISE's ``prompt_id``, ``category``, ``subcategory`` and ``explanation`` (the intended answer, which
WISE's judge is shown). ``explanation`` is listed in ``metadata["privileged"]``: a search critic
that reads it sees the answer, and the oracle rule flags such a run.

Scored categories by id range: culture 1-400, time 401-567, space 568-700, biology 701-800,
physics 801-900, chemistry 901-1000 (legacy; WISE_Verified uses other ranges and is not shipped).

Layout: ``<OUT>/<prompt_id>.png``, one image per prompt.

Aggregation: the per-image score is WiScore = (0.7 C + 0.2 R + 0.1 A) / 2 in [0, 1] (the
``wise_judge`` critic returns it; unparsable judge answers are NaN and dropped, as upstream does);
each category is the mean over its images; overall = 0.4 culture + 0.167 time + 0.133 space +
0.1 biology + 0.1 physics + 0.1 chemistry. Upstream refuses an overall unless all 1000 ids are
present; milr reports it only when every category is present and notes how many ids are missing.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from milr.benchmarks.base import Benchmark, BenchmarkError, ImageItem, aggregate_by_tag, copy_image, digit_stem

# (tag, first id, last id), legacy set
RANGES = (("culture", 1, 400), ("time", 401, 567), ("space", 568, 700), ("biology", 701, 800),
          ("physics", 801, 900), ("chemistry", 901, 1000))
CATEGORIES = tuple(t for t, _, _ in RANGES)
WEIGHTS = {"culture": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1}
N_PROMPTS = 1000
FILES = ("cultural_common_sense", "spatio-temporal_reasoning", "natural_science")
SPLITS = ("legacy", "rewrite")
PRIVILEGED = ("explanation",)


def category_of(prompt_id: int) -> str:
    for tag, lo, hi in RANGES:
        if lo <= prompt_id <= hi:
            return tag
    raise ValueError(f"WISE prompt_id {prompt_id} is outside 1-1000")


@lru_cache(maxsize=None)
def _records(split: str) -> tuple[dict, ...]:
    suffix = "_rewrite" if split == "rewrite" else ""
    out = []
    for name in FILES:
        out += json.loads(resources.files("milr.data").joinpath(f"wise/{name}{suffix}.json").read_text())
    return tuple(sorted(out, key=lambda r: r["prompt_id"]))


def wise_suite(split: str = "legacy", tags: Optional[list[str]] = None) -> list[dict]:
    """WISE's legacy prompts as suite items; the explanation is kept, marked privileged."""
    if split == "test":
        split = "legacy"
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of suite 'wise'; allowed: {', '.join(SPLITS)} (or test = legacy)")
    bad = [t for t in tags or () if t not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown tag {bad[0]!r} of suite 'wise'; allowed: {', '.join(CATEGORIES)}")
    items = []
    for r in _records(split):
        pid = int(r["prompt_id"])
        tag = category_of(pid)
        if tags and tag not in tags:
            continue
        md = {"tag": tag, "benchmark": "wise", "prompt_id": pid, "category": r["Category"], "subcategory": r["Subcategory"],
              "prompt": r["Prompt"], "explanation": r["Explanation"], "privileged": list(PRIVILEGED)}
        items.append({"id": f"wise-{pid:04d}", "prompt": r["Prompt"], "metadata": md, "seed": pid})
    return items


class WISE(Benchmark):
    name = "wise"
    title = "WISE"
    suite = "wise"
    layout = "wise"
    categories = CATEGORIES
    overall_rule = ("WiScore per image; overall = 0.4 culture + 0.167 time + 0.133 space + 0.1 biology "
                    "+ 0.1 physics + 0.1 chemistry (category means)")

    def detect(self, root: Path) -> bool:
        return any(digit_stem(p) for p in root.glob("*.png"))

    def read(self, root: Path) -> list[ImageItem]:
        by_id = {it["metadata"]["prompt_id"]: it for it in wise_suite("legacy")}
        items = []
        for png in sorted((p for p in root.glob("*.png") if digit_stem(p)), key=lambda p: int(p.stem)):
            it = by_id.get(int(png.stem))
            if it is None:
                raise BenchmarkError(f"{png.name}: not a WISE prompt_id (1-1000)")
            items.append(ImageItem(png, it["prompt"], dict(it["metadata"]), it["id"], 0))
        if not items:
            raise BenchmarkError(f"{root}: no WISE images (expected <prompt_id>.png)")
        return items

    def write(self, items: list[ImageItem], out: Path, image_index: Optional[int] = None) -> list[Path]:
        per_prompt = {it.image_index for it in items}
        if len(per_prompt) > 1 and image_index is None:
            raise BenchmarkError(f"the WISE layout holds one image per prompt; this run has {len(per_prompt)} "
                                 "(choose one with --image-index K)")
        written = []
        for it in items:
            if image_index is not None and it.image_index != image_index:
                continue
            if "prompt_id" not in it.metadata:
                raise BenchmarkError(f"prompt {it.prompt_id!r} has no WISE prompt_id: the WISE layout needs the wise suite")
            dst = out / f"{int(it.metadata['prompt_id'])}.png"
            copy_image(it.path, dst)
            written.append(dst)
        if not written:
            raise BenchmarkError(f"no image with index {image_index} in this run")
        return written

    def aggregate(self, items: Sequence[ImageItem], scores: Sequence[Optional[float]], confidence: float = 0.95,
                  n_resamples: int = 2000) -> dict:
        present = {it.tag for it, s in zip(items, scores) if s is not None}
        complete = set(CATEGORIES) <= present
        out = aggregate_by_tag(items, scores, confidence, n_resamples, self.overall_rule, weights=WEIGHTS, overall=complete)
        if not complete:
            out["notes"].append("no overall: the weighted overall needs every category "
                                f"(missing: {', '.join(t for t in CATEGORIES if t not in present)})")
        ids = {it.metadata.get("prompt_id") for it, s in zip(items, scores) if s is not None}
        if len(ids) < N_PROMPTS:
            out["notes"].append(f"{len(ids)} of {N_PROMPTS} prompt ids scored; WISE's script computes no overall "
                                "unless all 1000 are present")
        return out
