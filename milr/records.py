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

Safety against the second process and the half-made folder: the folder is built under a hidden
temporary name, its ``manifest.json`` written (temp file + ``os.replace``), and only then renamed
to its final name, so a folder with a name always has a manifest. A process holds an exclusive
``fcntl.flock`` on ``RUN_DIR/.lock`` while it writes; a second one gets a :class:`RunFolderError`.
On resume, a result whose images are missing or unreadable is dropped, so that prompt runs again.
Lines are strict JSON: a non-finite number is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from milr.errors import RunFolderError

if TYPE_CHECKING:
    from milr.run_record import PromptRecord, SideRecord

try:  # exclusive run-folder lock; Windows has no flock and runs unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

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


# Locks this process holds, by the lock file's (device, inode): flock conflicts between two
# descriptors of one process too, and a run resumed in the process that failed must not lock itself out.
_HELD: dict[tuple[int, int], int] = {}


def oracle_fields(recipe: dict) -> dict:
    """The oracle rule's verdict for a resolved recipe (manifest keys ``oracle``, ``oracle_reasons``,
    ``oracle_proxies``); a recipe whose prompts cannot be checked is recorded as unknown, not raised."""
    from milr.benchmarks.oracle import recipe_verdict
    from milr.errors import UserError

    try:
        return recipe_verdict(recipe).as_manifest()
    except (UserError, ValueError, KeyError, TypeError, OSError, ImportError) as e:
        return {"oracle": None, "oracle_reasons": [f"not checked: {e}"], "oracle_proxies": []}


def to_uint8(image: Any) -> Any:
    """A float image in [0, 1] as the uint8 CPU tensor its PNG holds (uint8 tensors pass unchanged):
    the one quantisation rule, shared by the PNG writer and the Ray workers' transport."""
    import torch

    if image.dtype == torch.uint8:
        return image.detach().cpu()
    return (image.detach().float().clamp(0, 1) * 255).round().to(device="cpu", dtype=torch.uint8)


class RunRecord:
    """Reads and writes one run folder."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.images = self.dir / "images"
        self.results_path = self.dir / "results.jsonl"
        self.manifest_path = self.dir / "manifest.json"
        self._lock_fd: int | None = None
        self.dropped: list[str] = []  # ids of results dropped by repair() (torn, duplicate, images lost)

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
    def create_with_manifest(cls, output_dir: str | Path, name: str, recipe: dict, seed: int, device: str,
                             extra: dict | None = None) -> "RunRecord":
        """A new, locked run folder that has its manifest from the moment it has its name."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{stamp}.", suffix=".partial", dir=out))
        except OSError as e:
            raise RunFolderError(f"cannot create a run folder in {str(out)!r}: {e.strerror or e}") from None
        rec = cls(tmp)
        rec.images.mkdir()
        rec.lock()
        rec.write_manifest(recipe, seed, device, extra)
        base = out / f"{name}-{stamp}"
        run_dir, k = base, 1
        while True:
            # rename() replaces an empty folder and refuses a full one; a name taken (two runs
            # started in one second) moves on to -1, -2, ...
            if not run_dir.exists():
                try:
                    os.rename(tmp, run_dir)
                    break
                except OSError:
                    if not run_dir.exists():
                        raise
            run_dir, k = Path(f"{base}-{k}"), k + 1
        fd = rec._lock_fd  # the flock belongs to the open file, which the rename does not touch
        rec.__init__(run_dir)
        rec._lock_fd = fd
        return rec

    @classmethod
    def open(cls, run_dir: str | Path) -> "RunRecord":
        """Open a run folder to resume it: checked, locked, and repaired."""
        rec = cls(run_dir)
        if not rec.dir.is_dir():
            raise RunFolderError(f"{run_dir}: no such run folder")
        if not rec.manifest_path.is_file():
            raise RunFolderError(
                f"{run_dir}: not a milr run folder (no manifest.json); a run killed before its manifest was written "
                "ran nothing: start it again with `milr run RECIPE`")
        try:
            manifest = rec.manifest()
        except (OSError, ValueError, RecursionError) as e:
            raise RunFolderError(f"{rec.manifest_path}: damaged manifest ({e}); the run cannot be resumed") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("recipe"), dict):
            raise RunFolderError(f"{rec.manifest_path}: damaged manifest (no recipe); the run cannot be resumed")
        rec.lock()
        rec.images.mkdir(exist_ok=True)
        rec.repair()
        return rec

    def lock(self) -> None:
        """Take the folder's exclusive lock, or fail at once if another process holds it."""
        if fcntl is None or self._lock_fd is not None:
            return
        try:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"{self.dir}: cannot create its lock file: {e.strerror or e}") from None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in _HELD:  # this process holds it already (a resume after an error in the same process)
            os.close(fd)
            self._lock_fd = _HELD[key]
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"{self.dir}: in use by another milr process (pid {holder}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = _HELD[key] = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            for key, fd in list(_HELD.items()):
                if fd == self._lock_fd:
                    del _HELD[key]
                    os.close(fd)  # closing the descriptor releases the flock
            self._lock_fd = None

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
        if "oracle" not in manifest:
            manifest.update(oracle_fields(recipe))
        _atomic_write(self.manifest_path, json.dumps(strict_json(manifest), indent=2, default=str, allow_nan=False))

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def oracle(self):
        """The run's :class:`milr.benchmarks.oracle.OracleVerdict`, from its manifest."""
        from milr.benchmarks.oracle import OracleVerdict

        return OracleVerdict.from_manifest(self.manifest())

    # -- results ------------------------------------------------------------------------------
    def repair(self) -> int:
        """Drop a partial trailing line left by a killed run; returns the bytes removed."""
        if not self.results_path.is_file():
            return 0
        data = self.results_path.read_bytes()
        keep = data.rfind(b"\n") + 1
        good = bytearray()
        seen: set[str] = set()
        for line in data[:keep].splitlines(keepends=True):
            try:
                r = json.loads(line)
                rid = str(r["id"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
                continue  # a line garbled by a crash is dropped; that prompt is redone
            if rid in seen:
                self.dropped.append(rid)
                continue  # a doubled line (never written under the lock, but old folders may have one)
            if not self._images_ok(r):
                self.dropped.append(rid)
                continue  # its images were deleted or truncated: that prompt is redone
            seen.add(rid)
            good += line
        if len(good) != len(data):
            tmp = self.results_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(good))
            os.replace(tmp, self.results_path)
        return len(data) - len(good)

    def records(self) -> list["PromptRecord"]:
        """Every result line as a typed :class:`~milr.run_record.PromptRecord` (checked: a bad key or
        value is a one-line error naming the file and line)."""
        from milr.run_record import read_records

        return read_records(self.dir, skip_torn=False) if self.results_path.is_file() else []

    def results(self) -> list[dict]:
        """Every result line as its JSON object, each checked against the schema first."""
        from milr.run_record import PromptRecord

        if not self.results_path.is_file():
            return []
        out = []
        for n, line in enumerate(self.results_path.read_text().splitlines(), 1):
            if line.strip():
                where = f"{self.results_path} line {n}"
                try:
                    data = json.loads(line)
                except ValueError:
                    raise RunFolderError(f"{where}: not JSON (a damaged run record; `milr run --resume` repairs it)") from None
                PromptRecord.from_json(data, where)
                out.append(data)
        return out

    def _images_ok(self, result: dict) -> bool:
        """Whether a result's initial and final images exist and decode."""
        from PIL import Image

        images = result.get("images") if isinstance(result, dict) else None
        if images is None:
            return True  # a line that never named images (written by hand or by a test)
        if not isinstance(images, dict):
            return False
        for k in ("initial", "final"):
            path = images.get(k)
            if not isinstance(path, str):
                return False
            try:
                with Image.open(self.dir / path) as im:
                    im.load()
            except Exception:  # missing, truncated, not an image: PIL raises many kinds
                return False
        return True

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.results()}

    def append(self, result: dict) -> None:
        line = (json.dumps(strict_json(result), default=_json_default, allow_nan=False) + "\n").encode()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def save_image(self, image, name: str) -> str:
        """Save a ``[3, H, W]`` image (float in [0, 1], or already :func:`to_uint8`) as PNG; returns
        the path relative to the run."""
        from PIL import Image

        arr = to_uint8(image).permute(1, 2, 0).numpy()
        path = self.images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(arr).save(tmp)
        os.replace(tmp, path)
        return str(path.relative_to(self.dir))

    # -- summary ------------------------------------------------------------------------------
    def summarize(self) -> dict:
        """Per-tag and overall means of the initial and final rewards (combined and per critic)."""
        return summarize(self.records())

    def write_summary(self) -> str:
        summary = self.summarize()
        _atomic_write(self.dir / "summary.json", json.dumps(strict_json(summary), indent=2, allow_nan=False))
        from milr.diagnostics import hacking_report, write_curves

        results = self.results()
        # The table, then whether the search reward rose while a held-out critic fell.
        table = format_summary(summary) + "\n\n" + hacking_report(results)
        header = self.oracle().header() if self.manifest_path.is_file() else None
        if header:  # an oracle run says so above its numbers
            table = header + "\n\n" + table
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
            text = f"{r['prompt']}\nreward {_fmt(r['initial']['reward'], 3)} -> {_fmt(r['final']['reward'], 3)}"
            for k, v in (r["final"].get("eval") or {}).items():
                text += f"\n{k}: {_fmt(r['initial']['eval'].get(k), 2)} -> {_fmt(v, 2)}"
            draw.text((2 * cell + 8, i * cell + 8), text, fill="black")
        path = self.dir / "grid.png"
        grid.save(path)
        return path


def _fmt(x: Any, digits: int) -> str:
    """A score for display; a skipped (non-finite, stored as null) one shows as n/a."""
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "n/a"


def strict_json(o: Any) -> Any:
    """``o`` with every non-finite float replaced by None, for strict JSON (RFC 8259 has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: strict_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json(v) for v in o]
    return o


def _atomic_write(path: Path, text: str) -> None:
    """Write a whole file or nothing: temp file in the same folder, fsync, ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def summarize(results: "list[PromptRecord] | list[dict]") -> dict:
    """Means by tag, then the overall mean of tag means (GenEval's aggregation)."""
    from milr.run_record import PromptRecord

    records = [r if isinstance(r, PromptRecord) else PromptRecord.from_json(r) for r in results]
    by_tag: dict[str, list[PromptRecord]] = defaultdict(list)
    for r in records:
        by_tag[r.tag].append(r)

    def flat(side: SideRecord) -> dict:
        # held-out critics are prefixed so a critic used both ways keeps two columns
        return {**side.scores, **{f"eval:{k}": v for k, v in side.eval.items()}}

    keys: list[str] = []
    for r in records:
        for k in flat(r.side("initial")):
            if k not in keys:
                keys.append(k)
    rows: dict[str, dict] = {}
    for tag, rs in sorted(by_tag.items()):
        row = {"n": len(rs), "reward_initial": _mean(r.side("initial").reward for r in rs),
               "reward_final": _mean(r.side("final").reward for r in rs)}
        for k in keys:
            for when in ("initial", "final"):
                vals = [flat(r.side(when)).get(k) for r in rs]
                row[f"{k}_{when}"] = _mean(vals)
        rows[tag] = row
    overall = {"n": len(results)}
    if rows:
        for col in next(iter(rows.values())):
            if col != "n":
                overall[col] = _mean(row[col] for row in rows.values())
    budget = {k: _mean(getattr(r.need("budget").budget, k) for r in records)
              for k in (records[0].need("budget").budget.to_json() if records else {})}
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
