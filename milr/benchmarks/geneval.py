"""GenEval's protocol (Ghosh et al. 2023, arXiv 2310.11513, github.com/djghosh13/geneval): layout and aggregation.

Layout (what GenEval's ``evaluate_images.py`` reads): ``<IMAGE_DIR>/<index:05d>/metadata.jsonl`` holding
that prompt's JSON line, and ``<index:05d>/samples/<k:04d>.png``; only ``\\d+.png`` files count, and
entries of ``IMAGE_DIR`` whose names are not digits are skipped (so milr's provenance file at the
top level is harmless). ``index`` is the prompt's line in GenEval's ``evaluation_metadata.jsonl``
for the ``geneval`` suite, else the prompt's position in the run. Four images per prompt.

Aggregation: a task (tag) score is the fraction of correct images in the tag, averaged over images,
not prompts; overall is the unweighted mean of the six task scores. "% correct images" and
"% correct prompts" (a prompt is correct when any of its images is) are reported beside it, as
GenEval's summary script does, without feeding the overall.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

from milr.benchmarks.base import Benchmark, BenchmarkError, ImageItem, aggregate_by_tag, clean_metadata, copy_image, digit_stem
from milr.geneval import TAGS

_SUITE_ID = re.compile(r"^geneval-(\d{5})$")


class GenEval(Benchmark):
    name = "geneval"
    title = "GenEval"
    suite = "geneval"
    layout = "geneval"
    categories = TAGS
    overall_rule = "unweighted mean of the task (tag) means; each task averaged over images"

    def detect(self, root: Path) -> bool:
        return any(p.is_dir() and p.name.isdigit() and (p / "metadata.jsonl").is_file() for p in root.iterdir())

    def read(self, root: Path) -> list[ImageItem]:
        items = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
            mfile = sub / "metadata.jsonl"
            if not mfile.is_file():
                continue
            try:
                md = json.loads(mfile.read_text().splitlines()[0])
            except (json.JSONDecodeError, IndexError) as e:
                raise BenchmarkError(f"{mfile}: not one JSON line ({e})") from None
            if not isinstance(md, dict) or "prompt" not in md:
                raise BenchmarkError(f"{mfile}: needs a JSON object with a 'prompt'")
            samples = sub / "samples"
            pngs = sorted((p for p in samples.iterdir() if digit_stem(p)), key=lambda p: int(p.stem)) if samples.is_dir() else []
            for png in pngs:
                items.append(ImageItem(png, md["prompt"], md, f"geneval-{sub.name}", int(png.stem)))
        if not items:
            raise BenchmarkError(f"{root}: no GenEval images (expected NNNNN/metadata.jsonl and NNNNN/samples/NNNN.png)")
        return items

    def write(self, items: list[ImageItem], out: Path, image_index: Optional[int] = None) -> list[Path]:
        for it in items:
            if "include" not in it.metadata or "tag" not in it.metadata:
                raise BenchmarkError(f"prompt {it.prompt_id!r} has no GenEval metadata (tag, include): "
                                     "the GenEval layout needs a GenEval-schema suite (geneval, minimug-world)")
        order = list(dict.fromkeys(it.prompt_id for it in items))
        suite_index = {pid: _SUITE_ID.match(pid) for pid in order}
        if all(suite_index.values()):  # the geneval suite: keep GenEval's own prompt numbering
            index = {pid: int(m.group(1)) for pid, m in suite_index.items()}  # type: ignore[union-attr]
        else:
            index = {pid: i for i, pid in enumerate(order)}
        written = []
        for it in items:
            folder = out / f"{index[it.prompt_id]:05d}"
            meta = folder / "metadata.jsonl"
            if not meta.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                meta.write_text(json.dumps(clean_metadata(it.metadata)) + "\n")
            dst = folder / "samples" / f"{it.image_index:04d}.png"
            if dst.exists():
                raise BenchmarkError(f"two images map to {dst} (prompt {it.prompt_id!r}, image {it.image_index})")
            copy_image(it.path, dst)
            written.append(dst)
        return written

    def aggregate(self, items: Sequence[ImageItem], scores: Sequence[Optional[float]], confidence: float = 0.95,
                  n_resamples: int = 2000) -> dict:
        out = aggregate_by_tag(items, scores, confidence, n_resamples, self.overall_rule)
        missing = [t for t in TAGS if t not in out["by_tag"]]
        if missing:
            out["notes"].append(f"tags absent: {', '.join(missing)} (GenEval's overall averages all six)")
        pairs = [(it, s) for it, s in zip(items, scores) if s is not None]
        if pairs and all(s in (0.0, 1.0) for _, s in pairs):
            by_prompt: dict[str, bool] = {}
            for it, s in pairs:
                by_prompt[it.prompt_id] = by_prompt.get(it.prompt_id, False) or s == 1.0
            out["correct_images"] = sum(s for _, s in pairs) / len(pairs)
            out["correct_prompts"] = sum(by_prompt.values()) / len(by_prompt)
        return out
