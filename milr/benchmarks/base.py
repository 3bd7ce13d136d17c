"""What every benchmark protocol provides: its images as items, its layout on disk, its aggregation.

A :class:`Benchmark` ties a prompt suite to the benchmark's official file layout (so the upstream
evaluators run unchanged on milr's outputs, and milr scores folders made by other tools) and to
the benchmark's official aggregation of per-image scores, with percentile-bootstrap intervals
(:func:`milr.compare.bootstrap_interval`). The rules are those of ``docs/benchmarks.md``
(GenEval, Ghosh et al. 2023; T2I-CompBench, Huang et al. 2023; WISE, Niu et al. 2025;
DPG-Bench, Hu et al. 2024), paraphrased; no upstream code is copied.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from milr.errors import UserError


class BenchmarkError(UserError):
    """A benchmark layout, export or aggregation that cannot be done as asked (one line, exit 2)."""

    kind = "benchmark"


@dataclass
class ImageItem:
    """One image to score or export: where it is, its prompt, and the prompt's metadata."""

    path: Path
    prompt: str
    metadata: dict
    prompt_id: str
    image_index: int = 0
    which: Optional[str] = None  # "initial" / "final" for images of a milr run

    @property
    def tag(self) -> str:
        return str(self.metadata.get("tag", "all"))


# Keys milr adds to a task's metadata for N images per prompt (see milr.prompts); never exported.
MILR_METADATA_KEYS = ("image_index",)
PROVENANCE_FILE = "milr_export.json"


def clean_metadata(md: dict) -> dict:
    """The prompt's metadata as the benchmark wrote it (without milr's per-image keys)."""
    return {k: v for k, v in md.items() if k not in MILR_METADATA_KEYS}


def run_items(run_dir: Path, which: str = "final") -> list[ImageItem]:
    """The images of a milr run folder (``results.jsonl``), in task order."""
    from milr.records import RunRecord

    if which not in ("initial", "final"):
        raise BenchmarkError(f"--which must be 'initial' or 'final', found {which!r}")
    results = RunRecord(run_dir).records()
    if not results:
        raise BenchmarkError(f"{run_dir} has no results (results.jsonl is empty or missing)")
    items = []
    for r in sorted(results, key=lambda r: r.need("index").index):
        md = r.metadata
        k = int(md.get("image_index", 0))
        pid = str(r.id).rsplit("#", 1)[0] if "image_index" in md else str(r.id)
        image = getattr(r.need("images").images, which)
        items.append(ImageItem(Path(run_dir) / str(image), r.need("prompt").prompt, md, pid, k, which))
    return items


def copy_image(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise BenchmarkError(f"image {src} does not exist (the run folder is incomplete)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def prepare_out(out: Path, force: bool = False) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise BenchmarkError(f"output folder {out} is not empty (choose another --out, or pass --force)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _mean(xs: Sequence[float]) -> Optional[float]:
    # Summed in order and divided, as milr.records.summarize does, so an exported run scored
    # back gives bit-identical means.
    return sum(xs) / len(xs) if xs else None


def cell(values: Sequence[float], confidence: float, n_resamples: int, tags: Optional[Sequence[str]] = None,
         weights: Optional[dict[str, float]] = None, estimate: Optional[float] = None) -> dict:
    """``{mean, low, high, n}``: the estimate and its percentile-bootstrap interval."""
    from milr.compare import bootstrap_interval

    est, lo, hi = bootstrap_interval(values, tags, confidence, n_resamples, weights=weights)
    mean = est if estimate is None else estimate
    nan = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else x  # noqa: E731
    return {"mean": nan(mean), "low": nan(lo), "high": nan(hi), "n": len(values)}


class Benchmark:
    """A benchmark protocol. Subclasses set the class attributes and override what differs."""

    name: str = ""
    title: str = ""
    suite: Optional[str] = None  # the registered prompt suite
    layout: Optional[str] = None  # the export format name (``milr export --format``), if any
    categories: tuple[str, ...] = ()
    overall_rule: str = "mean of the category means"
    unscorable: Optional[str] = None  # why the benchmark cannot be scored here (a missing file), if so

    # -- layout ------------------------------------------------------------------------------
    def detect(self, root: Path) -> bool:
        """Whether ``root`` looks like this benchmark's layout."""
        return False

    def read(self, root: Path) -> list[ImageItem]:
        raise BenchmarkError(f"{self.title or self.name} has no image layout milr can read")

    def write(self, items: list[ImageItem], out: Path, image_index: Optional[int] = None) -> list[Path]:
        raise BenchmarkError(f"{self.title or self.name} has no image layout milr can write")

    # -- aggregation ---------------------------------------------------------------------------
    def aggregate(self, items: Sequence[ImageItem], scores: Sequence[Optional[float]], confidence: float = 0.95,
                  n_resamples: int = 2000) -> dict:
        """Per-category means over images and the overall mean of category means."""
        return aggregate_by_tag(items, scores, confidence, n_resamples, self.overall_rule)


def aggregate_by_tag(items: Sequence[ImageItem], scores: Sequence[Optional[float]], confidence: float, n_resamples: int,
                     overall_rule: str = "mean of the category means", weights: Optional[dict[str, float]] = None,
                     overall: bool = True) -> dict:
    """Means by tag over images (NaN/None dropped and counted), and the (weighted) mean of tag means."""
    kept = [(it.tag, float(s)) for it, s in zip(items, scores) if s is not None]
    by: dict[str, list[float]] = {}
    for tag, s in kept:
        by.setdefault(tag, []).append(s)
    tags = sorted(by)
    out: dict[str, Any] = {
        "by_tag": {t: cell(by[t], confidence, n_resamples, estimate=_mean(by[t])) for t in tags},
        "overall_rule": overall_rule,
        "n_images": len(items),
        "n_dropped": len(items) - len(kept),
        "notes": [],
    }
    if not overall or not kept:
        out["overall"] = None
        return out
    means = {t: _mean(by[t]) for t in tags}
    if weights is None:
        est = _mean([means[t] for t in tags])
    else:
        est = sum(weights[t] * means[t] for t in tags) / sum(weights[t] for t in tags)
    out["overall"] = cell([s for _, s in kept], confidence, n_resamples, tags=[t for t, _ in kept], weights=weights,
                          estimate=est)
    return out


def read_jsonl_prompts(path: Path, root: Path) -> list[ImageItem]:
    """Images listed in a JSONL file of ``{"file", "prompt", "metadata"?, "id"?}`` (files relative to ``root``)."""
    from milr.training.data import read_jsonl  # errors name the file and line

    if not Path(path).is_file():
        raise BenchmarkError(f"prompt file {path} does not exist")
    items = []
    for rec in read_jsonl(path):
        if "file" not in rec or "prompt" not in rec:
            raise BenchmarkError(f"{rec['_line']}: each line needs 'file' and 'prompt'")
        md = dict(rec.get("metadata") or {})
        md.setdefault("prompt", rec["prompt"])
        file = Path(rec["file"])
        items.append(ImageItem(file if file.is_absolute() else root / file, rec["prompt"], md,
                               str(rec.get("id", file.stem)), int(rec.get("image_index", 0))))
    return items


_DIGITS = re.compile(r"^\d+$")


def digit_stem(p: Path) -> bool:
    return p.suffix == ".png" and bool(_DIGITS.match(p.stem))
