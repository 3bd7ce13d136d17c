"""Reference statistics for ensemble normalisation (``milr calibrate``, :mod:`milr.calibrate`, writes them).

A ``zscore`` or ``rank`` normalisation needs a critic's score distribution. Taking it from the
images a search is optimising (the first image of a prompt, or the first batch) makes the scale
depend on that search's luck -- one image has no spread at all -- so the statistics come from a
*reference set fixed before the search*, as ImageReward (Xu et al., arXiv 2304.05977) publishes a
mean and std of its reward over a reference set for exactly this purpose:

* a **run folder** written by the runner: each member's recorded score of the run's *initial*
  images (``results.jsonl`` lines ``{"initial": {"scores": {critic_name: score}}}``) -- what the
  model generates before any search, the distribution a search starts from;
* a **stats file** (JSON or YAML) written by :func:`milr.calibrate.calibrate` / ``milr calibrate``::

      {"format": "milr-critic-stats/1", "source": {...},
       "critics": {"world_pref": {"n": 12, "mean": ..., "std": ..., "min": ..., "max": ...,
                                  "quantiles": {"0.05": ..., ..., "0.95": ...},
                                  "values": [... sorted scores ...]}}}

``std`` is the population standard deviation (``ddof=0``); ``values`` lets ``rank`` use the exact
empirical CDF (a stats file without ``values`` serves ``zscore`` only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from milr.run_record import SideRecord, read_records

STATS_FORMAT = "milr-critic-stats/1"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class RunScores:
    """One ``results.jsonl`` line, reduced to what normalisation needs."""

    prompt: str
    metadata: dict
    initial: dict[str, float]
    final: dict[str, float]
    images: dict[str, str]  # "initial"/"final" -> path relative to the run folder


def _side_scores(side: Optional[SideRecord]) -> dict[str, float]:
    """The finite recorded scores of a side (a skipped non-finite score is null and left out)."""
    scores = side.scores if side is not None else {}
    return {name: v for name, v in scores.items() if v is not None and math.isfinite(v)}


def read_run_scores(run_dir: Union[str, Path]) -> list[RunScores]:
    """Every prompt's recorded per-critic scores in a run folder (typed lines of
    :func:`milr.run_record.read_records`; a torn last line is skipped)."""
    if not (Path(run_dir) / "results.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no results.jsonl)")
    out = []
    for rec in read_records(run_dir):
        im = rec.images
        images = {k: getattr(im, k) for k in ("initial", "final") if im is not None and isinstance(getattr(im, k), str)}
        out.append(RunScores(prompt=rec.prompt or "", metadata=rec.metadata, initial=_side_scores(rec.initial),
                             final=_side_scores(rec.final), images=images))
    return out


@dataclass(frozen=True)
class CriticStats:
    """A critic's score distribution on a reference set."""

    n: int
    mean: float
    std: float
    values: tuple[float, ...] = ()  # sorted; empty when a stats file gives only moments
    quantiles: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_scores(cls, scores: Sequence[float]) -> "CriticStats":
        vals = sorted(float(s) for s in scores if math.isfinite(float(s)))
        if not vals:
            raise ValueError("no finite scores to compute statistics from")
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
        return cls(n=n, mean=mean, std=std, values=tuple(vals),
                   quantiles={f"{q:g}": _quantile(vals, q) for q in QUANTILES})

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "CriticStats":
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping with n, mean, std, found {d!r}")
        try:
            values = tuple(sorted(float(v) for v in d.get("values") or ()))
            n = int(d.get("n", len(values)))
            mean, std = float(d["mean"]), float(d["std"])
        except KeyError as e:
            raise ValueError(f"{where}: missing {e.args[0]!r} (needs n, mean, std)") from None
        except (TypeError, ValueError):
            raise ValueError(f"{where}: n, mean, std and values must be numbers") from None
        if not (math.isfinite(mean) and math.isfinite(std)) or std < 0 or n < 1:
            raise ValueError(f"{where}: needs n >= 1, a finite mean and a finite std >= 0 (found n={n}, mean={mean}, std={std})")
        quantiles = {str(k): float(v) for k, v in (d.get("quantiles") or {}).items()}
        return cls(n=n, mean=mean, std=std, values=values, quantiles=quantiles)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std,
                "min": self.values[0] if self.values else None, "max": self.values[-1] if self.values else None,
                "quantiles": self.quantiles, "values": list(self.values)}


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, ``method='linear'``)."""
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (pos - lo) * (sorted_vals[hi] - sorted_vals[lo])


def run_stats(run_dir: Union[str, Path], side: str = "initial") -> dict[str, CriticStats]:
    """Per-critic statistics of a run folder's recorded ``initial`` (or ``final``) scores."""
    per: dict[str, list[float]] = {}
    for r in read_run_scores(run_dir):
        for name, v in getattr(r, side).items():
            per.setdefault(name, []).append(v)
    return {name: CriticStats.from_scores(v) for name, v in per.items()}


def read_stats_file(path: Union[str, Path]) -> dict[str, CriticStats]:
    """Per-critic statistics from a JSON or YAML stats file (format in the module docstring)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        from milr.config import parse_yaml

        data = parse_yaml(text, str(p))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("critics"), dict):
        raise ValueError(f"{p}: a stats file needs a 'critics' mapping {{name: {{n, mean, std, ...}}}}")
    return {str(k): CriticStats.from_dict(v, f"{p}: critics.{k}") for k, v in data["critics"].items()}


def resolve_reference_path(ref: Union[str, Path], base_dir: Optional[Path] = None) -> Optional[Path]:
    """The reference path as given (relative to the working directory), else relative to ``base_dir``."""
    p = Path(str(ref)).expanduser()
    if p.exists():
        return p.resolve()
    if base_dir is not None and not p.is_absolute() and (Path(base_dir) / p).exists():
        return (Path(base_dir) / p).resolve()
    return None


def is_score_reference(path: Path) -> bool:
    """A stats file or a run folder (recorded scores), as opposed to a folder of images to score."""
    return path.is_file() or (path / "results.jsonl").is_file()


def reference_stats(ref: Union[str, Path], member: str, base_dir: Optional[Path] = None) -> CriticStats:
    """Statistics of critic ``member`` from a run folder's recorded initial scores or a stats file."""
    path = resolve_reference_path(ref, base_dir)
    if path is None:
        raise FileNotFoundError(f"reference {str(ref)!r} does not exist (a run folder or a stats file from `milr calibrate`)")
    if path.is_file():
        table, what = read_stats_file(path), "stats file"
    elif (path / "results.jsonl").is_file():
        table, what = run_stats(path, "initial"), "run folder's recorded initial scores"
    else:
        raise ValueError(f"reference {str(path)!r} is neither a stats file nor a run folder with results.jsonl")
    if member not in table:
        raise ValueError(f"{what} {str(path)!r} has no scores of critic {member!r} (it has: {', '.join(sorted(table)) or 'none'})")
    return table[member]


def write_stats(stats: dict[str, CriticStats], out: Union[str, Path], source: Optional[dict] = None) -> Path:
    """Write a stats file (JSON, or YAML when ``out`` ends in .yaml/.yml)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": STATS_FORMAT, "source": source or {}, "critics": {k: s.to_dict() for k, s in sorted(stats.items())}}
    if out.suffix in (".yaml", ".yml"):
        import yaml

        out.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        out.write_text(json.dumps(data, indent=2) + "\n")
    return out
