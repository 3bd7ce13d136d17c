"""Run records: one folder per run that can be trusted after a crash and resumed.

Layout::

    RUN_DIR/manifest.json      resolved recipe, seed, package versions, git revision, device
    RUN_DIR/results.jsonl      one line per prompt, appended and fsync'ed as each prompt finishes
    RUN_DIR/images/NNNNN_initial.png, NNNNN_final.png   (steps/NNNNN_SSS.png with save_steps)
    RUN_DIR/summary.json, summary.md, grid.png          written at the end (grid: initial | final)
    RUN_DIR/curves.png   per-step rewards by category; summary.md's "Reward hacking check" section
                         (both from :mod:`milr.diagnostics`)

A line is written with a single ``write`` of the full line in append mode followed by ``fsync``,
so a run killed with SIGKILL leaves at most one partial trailing line; :meth:`RunRecord.open`
drops it on resume, and prompts already recorded are skipped.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import defaultdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable

_PACKAGES = ("milr", "torch", "transformers", "numpy", "open_clip_torch", "ultralytics", "lightning", "cma", "pydantic")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class RunRecord:
    """Reads and writes one run folder."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.images = self.dir / "images"
        self.results_path = self.dir / "results.jsonl"
        self.manifest_path = self.dir / "manifest.json"

    # -- creation / resume -----------------------------------------------------------------------
    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> "RunRecord":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        run_dir, k = base, 1
        while run_dir.exists():
            run_dir = Path(f"{base}-{k}")
            k += 1
        run_dir.mkdir(parents=True)
        rec = cls(run_dir)
        rec.images.mkdir()
        return rec

    @classmethod
    def open(cls, run_dir: str | Path) -> "RunRecord":
        rec = cls(run_dir)
        if not rec.manifest_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a milr run folder (no manifest.json)")
        rec.images.mkdir(exist_ok=True)
        rec.repair()
        return rec

    def write_manifest(self, recipe: dict, seed: int, device: str, extra: dict | None = None) -> None:
        manifest = {
            "recipe": recipe,
            "seed": seed,
            "device": device,
            "versions": package_versions(),
            "git_revision": git_revision(),
            "host": socket.gethostname(),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        manifest.update(extra or {})
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.manifest_path)

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    # -- results ------------------------------------------------------------------------------
    def repair(self) -> int:
        """Drop a partial trailing line left by a killed run; returns the bytes removed."""
        if not self.results_path.is_file():
            return 0
        data = self.results_path.read_bytes()
        keep = data.rfind(b"\n") + 1
        good = bytearray()
        for line in data[:keep].splitlines(keepends=True):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                continue  # a line garbled by a crash is dropped; that prompt is redone
            good += line
        if len(good) != len(data):
            tmp = self.results_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(good))
            os.replace(tmp, self.results_path)
        return len(data) - len(good)

    def results(self) -> list[dict]:
        if not self.results_path.is_file():
            return []
        out = []
        for line in self.results_path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.results()}

    def append(self, result: dict) -> None:
        line = (json.dumps(result, default=_json_default) + "\n").encode()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def save_image(self, image, name: str) -> str:
        """Save a ``[3, H, W]`` float image in [0, 1] as PNG; returns the path relative to the run."""
        from PIL import Image
        import numpy as np

        arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        path = self.images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(arr).save(tmp)
        os.replace(tmp, path)
        return str(path.relative_to(self.dir))

    # -- summary ------------------------------------------------------------------------------
    def summarize(self) -> dict:
        """Per-tag and overall means of the initial and final rewards (combined and per critic)."""
        return summarize(self.results())

    def write_summary(self) -> str:
        summary = self.summarize()
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        from milr.diagnostics import hacking_report, write_curves

        results = self.results()
        # The table, then whether the search reward rose while a held-out critic fell.
        table = format_summary(summary) + "\n\n" + hacking_report(results)
        (self.dir / "summary.md").write_text(table + "\n")
        self.write_grid()
        write_curves(self.dir, results)
        return table

    def write_grid(self, max_rows: int = 48, cell: int = 128) -> Path | None:
        """``grid.png``: one row per prompt, initial image beside final image (people look, not read)."""
        from PIL import Image, ImageDraw

        rows = []
        for r in self.results()[:max_rows]:
            paths = [self.dir / r["images"][k] for k in ("initial", "final")]
            if all(p.is_file() for p in paths):
                rows.append((r, paths))
        if not rows:
            return None
        label_w = 4 * cell
        grid = Image.new("RGB", (2 * cell + label_w, cell * len(rows)), "white")
        draw = ImageDraw.Draw(grid)
        for i, (r, paths) in enumerate(rows):
            for j, p in enumerate(paths):
                img = Image.open(p).convert("RGB").resize((cell, cell), Image.NEAREST)
                grid.paste(img, (j * cell, i * cell))
            text = f"{r['prompt']}\nreward {r['initial']['reward']:.3f} -> {r['final']['reward']:.3f}"
            for k, v in (r["final"].get("eval") or {}).items():
                text += f"\n{k}: {r['initial']['eval'].get(k, float('nan')):.2f} -> {v:.2f}"
            draw.text((2 * cell + 8, i * cell + 8), text, fill="black")
        path = self.dir / "grid.png"
        grid.save(path)
        return path


def _json_default(o: Any) -> Any:
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _mean(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(results: list[dict]) -> dict:
    """Means by tag, then the overall mean of tag means (GenEval's aggregation)."""
    by_tag: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_tag[(r.get("metadata") or {}).get("tag", "all")].append(r)
    def flat(side: dict) -> dict:
        # held-out critics are prefixed so a critic used both ways keeps two columns
        return {**side.get("scores", {}), **{f"eval:{k}": v for k, v in side.get("eval", {}).items()}}

    keys: list[str] = []
    for r in results:
        for k in flat(r["initial"]):
            if k not in keys:
                keys.append(k)
    rows: dict[str, dict] = {}
    for tag, rs in sorted(by_tag.items()):
        row = {"n": len(rs), "reward_initial": _mean(r["initial"]["reward"] for r in rs),
               "reward_final": _mean(r["final"]["reward"] for r in rs)}
        for k in keys:
            for when in ("initial", "final"):
                vals = [flat(r[when]).get(k) for r in rs]
                row[f"{k}_{when}"] = _mean(vals)
        rows[tag] = row
    overall = {"n": len(results)}
    if rows:
        for col in next(iter(rows.values())):
            if col != "n":
                overall[col] = _mean(row[col] for row in rows.values())
    budget = {k: _mean(r["budget"].get(k) for r in results) for k in (results[0]["budget"] if results else {})}
    return {"by_tag": rows, "overall": overall, "mean_budget": budget}


def format_summary(summary: dict) -> str:
    rows = dict(summary["by_tag"])
    rows["overall"] = summary["overall"]
    if not summary["by_tag"]:
        return "(no results)"
    cols = [c for c in summary["overall"] if c != "n"]
    head = "| tag | n | " + " | ".join(cols) + " |"
    sep = "|---|---|" + "---|" * len(cols)
    lines = [head, sep]
    for tag, row in rows.items():
        vals = " | ".join("" if row.get(c) is None else f"{row[c]:.3f}" for c in cols)
        lines.append(f"| {tag} | {row['n']} | {vals} |")
    return "\n".join(lines)
