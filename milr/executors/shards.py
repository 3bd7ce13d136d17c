"""Static shards of one run (``milr run ... --shard K/N``) and their merge (``milr merge``).

For SLURM job arrays and torchrun users, who launch N copies of one command: shard K of N runs the
prompts whose index ``i`` has ``i % N == K``. Round-robin rather than contiguous ranges, so each
shard gets a like mix of a suite's tags (suites list prompts tag by tag) and a like amount of work.
The shard is recorded in ``manifest.json`` (``"shard": {"index": K, "count": N, "prompts": n}``), so
``--resume`` continues the same share. The recipe itself is identical in every shard.

``milr merge RUN_DIR... --out DIR`` checks that the folders are the N shards of one run (same
recipe, same critics, same prompts fingerprint, each shard once), that every prompt has exactly one
line, and writes one ordinary run folder: ``results.jsonl`` in prompt order, the images copied, the
api_judge spend added up, the summary. Peers do the same by hand with index ranges and
``cat``: GenEval's ``generation/diffusers_generate.py`` (per-index folders), the MILR authors'
``--start/--end`` loops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from milr.errors import RunFolderError, UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: merge cannot tell a running shard
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def select(self, tasks: list) -> list:
        return [t for t in tasks if t.index % self.count == self.index]

    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def as_manifest(self, n_prompts: int) -> dict:
        return {"index": self.index, "count": self.count, "prompts": n_prompts}

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Shard | None":
        s = manifest.get("shard")
        if s is None:
            return None
        try:
            return cls(int(s["index"]), int(s["count"]))
        except (KeyError, TypeError, ValueError):
            raise RunFolderError(f"damaged manifest: shard {s!r} is not {{index, count}}") from None


def parse_shard(text: str) -> Shard:
    """``"K/N"`` with ``0 <= K < N``; anything else is a one-line usage error."""
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text or "")
    if not m:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shard K of N, counted from 0)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or n > 100_000:
        raise UserError(f"--shard {text!r}: the number of shards N must be between 1 and 100000")
    if not 0 <= k < n:
        raise UserError(f"--shard {text!r}: K must be between 0 and {n - 1} (shards are counted from 0)")
    return Shard(k, n)


# -- merge ----------------------------------------------------------------------------------------
def _held(run_dir: Path) -> bool:
    """Whether a process holds the run folder's lock (a shard still running)."""
    lock = run_dir / ".lock"
    if fcntl is None or not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the shared lock taken to test
    return False


def _read_shard(run_dir: Path) -> tuple[dict, list[dict]]:
    from milr.records import RunRecord

    if not (run_dir / "manifest.json").is_file():
        raise RunFolderError(f"{run_dir}: not a milr run folder (no manifest.json)")
    if _held(run_dir):
        raise RunFolderError(f"{run_dir}: still in use by a milr process; merge when every shard has finished")
    rec = RunRecord(run_dir)
    try:
        manifest = rec.manifest()
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{run_dir}: damaged manifest ({e})") from None
    results, text = [], rec.results_path.read_text() if rec.results_path.is_file() else ""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except ValueError:
            raise RunFolderError(f"{rec.results_path}:{n}: a damaged line (a killed shard?); resume it with "
                                 f"`milr run --resume {run_dir}` first") from None
    return manifest, results


# Where and how a shard runs, not what it computes (records do not depend on them): these may
# differ between the shards of one run.
_PLACEMENT = ("name", "output_dir", "cache_dir", "device", "threads", "batch_prompts", "executor", "workers",
              "gpus_per_worker", "cpus_per_worker")


def _what(recipe: dict) -> dict:
    """The recipe less its placement keys: what must be equal in every shard."""
    run = {k: v for k, v in (recipe.get("run") or {}).items() if k not in _PLACEMENT}
    return {**recipe, "run": run}


def merge_runs(run_dirs: Sequence[str | Path], out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Merge the run folders of the N shards of one run into the new run folder ``out``."""
    from milr.records import RunRecord, _atomic_write, strict_json

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UserError("milr merge: give the run folders of the shards")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise UserError("milr merge: a run folder is given twice")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"milr merge: --out {out} exists and is not empty; give a new folder")
    for d in dirs:
        if not d.is_dir():
            raise RunFolderError(f"{d}: no such run folder")
    shards = [(d, *_read_shard(d)) for d in dirs]

    first_dir, first, _ = shards[0]
    count = None
    seen_shards: dict[int, Path] = {}
    for d, m, _ in shards:
        s = Shard.from_manifest(m)
        if s is None:
            raise RunFolderError(f"{d}: not a shard (its manifest has no 'shard'); merge the folders of "
                                 "`milr run ... --shard K/N`")
        if count is None:
            count = s.count
        if s.count != count:
            raise RunFolderError(f"{d}: shard {s.label()} of a {s.count}-way split, but {first_dir} is of a "
                                 f"{count}-way split")
        if s.index in seen_shards:
            raise RunFolderError(f"{d}: shard {s.label()} is also {seen_shards[s.index]}; give each shard once")
        seen_shards[s.index] = d
        for key, what in (("critics", "critics"), ("evaluate", "held-out critics (evaluate)")):
            if m["recipe"].get(key) != first["recipe"].get(key):
                raise RunFolderError(f"{d}: its {what} differ from {first_dir}'s; shards of one run share one recipe")
        if _what(m["recipe"]) != _what(first["recipe"]):
            raise RunFolderError(f"{d}: its recipe differs from {first_dir}'s; shards of one run share one recipe")
        if m.get("prompt_source") != first.get("prompt_source") or m.get("prompts") != first.get("prompts"):
            raise RunFolderError(f"{d}: its prompts differ from {first_dir}'s (source or fingerprint)")
    missing_shards = sorted(set(range(count)) - set(seen_shards))
    if missing_shards:
        raise RunFolderError(f"milr merge: shard(s) {', '.join(f'{k}/{count}' for k in missing_shards)} not given")

    total = int(first.get("prompts") or 0)
    by_id: dict[str, tuple[Path, dict]] = {}
    for d, m, results in shards:
        s = Shard.from_manifest(m)
        for r in results:
            rid = str(r.get("id"))
            if rid in by_id:
                raise RunFolderError(f"prompt {rid!r} has a line in {by_id[rid][0]} and in {d}; "
                                     "each prompt must be recorded once")
            if not isinstance(r.get("index"), int) or r["index"] % s.count != s.index:
                raise RunFolderError(f"{d}: prompt {rid!r} (index {r.get('index')}) does not belong to shard {s.label()}")
            by_id[rid] = (d, r)
    indices = sorted(r["index"] for _, r in by_id.values())
    if len(set(indices)) != len(indices):
        raise RunFolderError("milr merge: two lines share one prompt index; the shards are not of one run")
    missing = sorted(set(range(total)) - set(indices))
    if missing:
        owners = sorted({k % count for k in missing})
        raise RunFolderError(f"milr merge: {len(missing)} of {total} prompts have no line (indices "
                             f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}); resume shard(s) "
                             + ", ".join(f"{seen_shards[k]}" for k in owners))

    # Build under a hidden name and rename at the end, as a run folder is (records.py): a folder
    # with the final name is always whole.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    lines = []
    for d, r in sorted(by_id.values(), key=lambda dr: dr[1]["index"]):
        images = r.get("images") or {}
        for rel in [images.get("initial"), images.get("final"), *(images.get("steps") or [])]:
            if not isinstance(rel, str):
                continue
            src, dst = d / rel, tmp / rel
            if not src.is_file():
                raise RunFolderError(f"{d}: image {rel} of prompt {r['id']!r} is missing; resume that shard first")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        lines.append(json.dumps(strict_json(r), allow_nan=False) + "\n")
    (tmp / "results.jsonl").write_text("".join(lines))

    spend: dict[str, dict] = {}  # api_judge's spend: the shards' calls and dollars add up
    for d, _, _ in shards:
        for f in sorted(d.glob("api_judge-spend-*.json")):
            saved = json.loads(f.read_text())
            acc = spend.setdefault(f.name, {**saved, "calls": 0, "spent_usd": 0.0})
            acc["calls"] += int(saved.get("calls", 0))
            acc["spent_usd"] += float(saved.get("spent_usd", 0.0))
    for name, saved in spend.items():
        (tmp / name).write_text(json.dumps(saved))

    manifest = {k: v for k, v in first.items() if k != "shard"}
    manifest["merged_from"] = [{"run_dir": str(d.resolve()), "shard": m["shard"], "started": m.get("started"),
                                "host": m.get("host"), "git_revision": m.get("git_revision")} for d, m, _ in shards]
    manifest["started"] = min(str(m.get("started", "")) for _, m, _ in shards)
    manifest["merged"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _atomic_write(tmp / "manifest.json", json.dumps(strict_json(manifest), indent=2, default=str, allow_nan=False))
    if out.exists():
        out.rmdir()  # empty (checked above); rename needs the name free
    os.rename(tmp, out)
    log(RunRecord(out).write_summary())
    return out
