"""``milr export``: a run's images in a benchmark's official layout, so the official evaluator runs unchanged.

    milr export RUN --format geneval       --out DIR   # DIR/<index:05d>/metadata.jsonl + samples/<k:04d>.png
    milr export RUN --format t2i-compbench --out DIR   # DIR/samples/{prompt}_{NNNNNN}.png
    milr export RUN --format wise          --out DIR   # DIR/<prompt_id>.png

The layouts are GenEval's (Ghosh et al. 2023), T2I-CompBench's (Huang et al. 2023) and WISE's
(Niu et al. 2025), as described in ``docs/benchmarks.md`` and implemented in :mod:`milr.benchmarks`.
Images are copied byte for byte (PNG, lossless); ``--which final`` (default) or ``initial``.
A provenance file ``milr_export.json`` (the run, its oracle verdict, what was exported) sits at
the top of DIR, where none of the official evaluators looks (GenEval skips non-digit entries);
``milr eval DIR`` reads it to fill the "oracle" column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from milr.benchmarks import LAYOUTS
from milr.benchmarks.base import PROVENANCE_FILE, BenchmarkError, prepare_out, run_items


def export_run(run_dir: str | Path, fmt: str, out: str | Path, which: str = "final", image_index: Optional[int] = None,
               force: bool = False) -> dict:
    """Write the run's images in ``fmt``'s layout under ``out``; returns the provenance record."""
    from milr.records import RunRecord

    if fmt not in LAYOUTS:
        raise BenchmarkError(f"unknown --format {fmt!r}; allowed: {', '.join(LAYOUTS)}")
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise BenchmarkError(f"{run_dir} is not a milr run folder (no manifest.json)")
    items = run_items(run_dir, which)  # checked before anything is written
    out = prepare_out(Path(out), force)
    files = LAYOUTS[fmt].write(items, out, image_index)
    rec = RunRecord(run_dir)
    manifest = rec.manifest()
    provenance = {
        "format": fmt,
        "run": str(run_dir.resolve()),
        "which": which,
        "images": len(files),
        "prompts": len({it.prompt_id for it in items}),
        "suite": (manifest.get("recipe", {}).get("prompts") or {}).get("suite"),
        **rec.oracle().as_manifest(),
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
