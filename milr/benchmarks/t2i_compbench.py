"""T2I-CompBench (Huang et al. 2023, arXiv 2307.06350, github.com/Karine-Huang/T2I-CompBench): suite, layout, aggregation.

Suite ``t2i-compbench``: the val prompts (300 per category) shipped in ``milr/data/t2i-compbench``
with their SOURCE.md (MIT). Categories color, shape, texture (BLIP-VQA), spatial (UniDet distance
rule), non_spatial (CLIPScore), complex (3-in-1); numeracy and 3d_spatial (T2I-CompBench++) only
when asked for by ``tags``. Complex prompts carry ``complex_subset`` (spatial / action /
spatialaction), matched as the 3-in-1 scorer matches them: lowercased text up to the first ".".
Split ``val`` (``test`` is accepted, the recipes' default) or ``val-before-2025-09-03`` (the colour
file before upstream removed its duplicates; the other categories did not change).

Layout: ``<OUT>/samples/{prompt}_{NNNNNN}.png`` with a running index over all images, which is
how the benchmark's scorers find the prompt (the text before the first ``_``). Ten images per
prompt in the paper protocol.

Aggregation: per-category mean over images (the benchmark's own figure). The "overall" is the
unweighted mean of the six original categories, MILR's Table 2 convention (not a T2I-CompBench
figure); it is left out when a category is missing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from milr.benchmarks.base import Benchmark, BenchmarkError, ImageItem, aggregate_by_tag, copy_image

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
PLUS_CATEGORIES = ("numeracy", "3d_spatial")  # T2I-CompBench++ only; no milr scorer yet
COMPLEX_SUBSETS = ("spatial", "action", "spatialaction")
SPLITS = ("val", "val-before-2025-09-03")
_FILE = re.compile(r"^(?P<prompt>[^_]+)_(?P<index>\d+)\.png$")


def _lines(name: str) -> list[str]:
    text = resources.files("milr.data").joinpath(f"t2i-compbench/{name}").read_text()
    # the val files use CRLF line endings and some lack a final newline
    return [line.strip() for line in text.replace("\r", "").split("\n") if line.strip()]


def _match_key(prompt: str) -> str:
    return prompt.lower().split(".")[0].strip()


@lru_cache(maxsize=None)
def _complex_subsets() -> dict[str, str]:
    return {_match_key(p): sub for sub in COMPLEX_SUBSETS for p in _lines(f"complex_val_{sub}.txt")}


def t2i_compbench_suite(split: str = "val", tags: Optional[list[str]] = None) -> list[dict]:
    """The val prompts of each category, as suite items ``{id, prompt, metadata, seed}``."""
    if split == "test":
        split = "val"
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of suite 't2i-compbench'; allowed: {', '.join(SPLITS)} (or test = val)")
    allowed = CATEGORIES + PLUS_CATEGORIES
    bad = [t for t in tags or () if t not in allowed]
    if bad:
        raise ValueError(f"unknown tag {bad[0]!r} of suite 't2i-compbench'; allowed: {', '.join(allowed)}")
    items = []
    for c, category in enumerate(allowed):
        if (tags and category not in tags) or (not tags and category in PLUS_CATEGORIES):
            continue
        old = category == "color" and split != "val"
        name = "color_val_before_2025-09-03.txt" if old else f"{category}_val.txt"
        prefix = f"t2i-{category}-pre2025-09" if old else f"t2i-{category}"  # the old file's lines are other prompts
        for i, prompt in enumerate(_lines(name)):
            md = {"tag": category, "category": category, "benchmark": "t2i-compbench", "line": i, "prompt": prompt}
            if category == "complex":
                md["complex_subset"] = _complex_subsets().get(_match_key(prompt), "spatialaction")  # 3-in-1: "all others" average all three
            # seeds are fixed per (category, line), so a prompt keeps its seed whatever the tag filter
            items.append({"id": f"{prefix}-{i:03d}", "prompt": prompt, "metadata": md, "seed": 10_000 * c + i})
    return items


@lru_cache(maxsize=None)
def _prompt_index() -> dict[str, dict]:
    """Prompt text -> its suite metadata (both colour files; categories share no prompt)."""
    out: dict[str, dict] = {}
    for split in SPLITS:
        for it in t2i_compbench_suite(split, list(CATEGORIES + PLUS_CATEGORIES)):
            out.setdefault(it["prompt"], {**it["metadata"], "id": it["id"]})
    return out


class T2ICompBench(Benchmark):
    name = "t2i-compbench"
    title = "T2I-CompBench"
    suite = "t2i-compbench"
    layout = "t2i-compbench"
    categories = CATEGORIES
    overall_rule = "per-category mean over images (official); overall = unweighted mean of the 6 categories (MILR Table 2, not official)"

    @staticmethod
    def _folder(root: Path) -> Path:
        return root / "samples" if (root / "samples").is_dir() else root

    def detect(self, root: Path) -> bool:
        folder = self._folder(root)
        return folder.is_dir() and any(_FILE.match(p.name) for p in folder.glob("*.png"))

    def read(self, root: Path) -> list[ImageItem]:
        index = _prompt_index()
        items = []
        for png in sorted(self._folder(root).glob("*.png")):
            m = _FILE.match(png.name)
            if not m:
                continue
            prompt = m.group("prompt")
            md = index.get(prompt)
            if md is None:
                raise BenchmarkError(f"{png.name}: prompt {prompt!r} is not a T2I-CompBench val prompt "
                                     "(score it with --prompts FILE.jsonl instead)")
            md = {k: v for k, v in md.items() if k != "id"}
            items.append(ImageItem(png, prompt, md, index[prompt]["id"], int(m.group("index"))))
        if not items:
            raise BenchmarkError(f"{root}: no T2I-CompBench images (expected samples/{{prompt}}_{{NNNNNN}}.png)")
        return items

    def write(self, items: list[ImageItem], out: Path, image_index: Optional[int] = None) -> list[Path]:
        written = []
        for n, it in enumerate(items):
            if "_" in it.prompt or "/" in it.prompt or not it.prompt.strip():
                raise BenchmarkError(f"prompt {it.prompt!r} cannot be a T2I-CompBench file name (it must not contain '_' or '/')")
            dst = out / "samples" / f"{it.prompt}_{n:06d}.png"
            copy_image(it.path, dst)
            written.append(dst)
        return written

    def aggregate(self, items: Sequence[ImageItem], scores: Sequence[Optional[float]], confidence: float = 0.95,
                  n_resamples: int = 2000) -> dict:
        present = {it.tag for it, s in zip(items, scores) if s is not None}
        out = aggregate_by_tag(items, scores, confidence, n_resamples, self.overall_rule, overall=False)
        if set(CATEGORIES) <= present:
            six = [(it, s) for it, s in zip(items, scores) if it.tag in CATEGORIES]
            out["overall"] = aggregate_by_tag([it for it, _ in six], [s for _, s in six], confidence, n_resamples)["overall"]
        else:
            out["notes"].append("no overall: MILR's T2I-CompBench overall averages all six categories "
                                f"(present: {', '.join(sorted(present)) or 'none'})")
        return out
