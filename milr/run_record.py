"""The typed schema of a run folder's ``results.jsonl`` line: one :class:`PromptRecord` per prompt.

The runner writes a :class:`PromptRecord` (``to_json``); summaries, ``milr compare``,
``milr compare-critics``, ``milr agree``, ensembles' reference loading and the benchmarks read
lines back with :func:`read_records`. The JSON keys are the ones run folders have always held
(``index, id, prompt, metadata, initial, final, steps, skipped_nonfinite, budget, seconds, trace,
curve, guard?, images``; a side holds ``reward, scores, eval, text`` and the final side ``step``),
so old folders load unchanged. A key the schema does not know, or a value of the wrong kind, is a
:class:`~milr.errors.RunFolderError` naming the file and line; so is a key a reader needs that the
line lacks (:meth:`PromptRecord.need`) -- lines written by hand with fewer keys load as long as no
reader asks for what is missing. After dataclasses-with-JSON record types such as
lm-evaluation-harness's per-sample logs; no code is taken from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from milr.errors import RunFolderError

Score = Optional[float]  # null where a non-finite score was skipped


def _where(where: str) -> str:
    return f"{where}: " if where else ""


def _check_keys(data: Any, cls: type, where: str, what: str) -> dict:
    if not isinstance(data, dict):
        raise RunFolderError(f"{_where(where)}{what} must be an object, found {type(data).__name__}")
    known = [f.name for f in fields(cls) if not f.name.startswith("_")]
    unknown = [k for k in data if k not in known]
    if unknown:
        key = unknown[0] if what == "record" else f"{what}.{unknown[0]}"
        raise RunFolderError(f"{_where(where)}unknown key {key!r} in a run record (known: {', '.join(known)})")
    return data


def _scores(data: Any, where: str, what: str) -> dict[str, Score]:
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in data.values()):
        raise RunFolderError(f"{_where(where)}{what} must map critic names to numbers or null")
    return {str(k): None if v is None else float(v) for k, v in data.items()}


@dataclass
class SideRecord:
    """The initial (first) or final (returned) image of a prompt: search reward and every critic's score."""

    reward: Score = None
    scores: dict[str, Score] = field(default_factory=dict)  # the search critics (``critics:``)
    eval: dict[str, Score] = field(default_factory=dict)  # held-out critics (``evaluate:``)
    text: Optional[str] = None  # the reasoning text the image was drawn on
    step: Optional[int] = None  # the search step that drew it (final side only)

    def to_json(self) -> dict:
        out = {"reward": self.reward, "scores": dict(self.scores), "eval": dict(self.eval), "text": self.text}
        if self.step is not None:
            out["step"] = self.step
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "", what: str = "side") -> "SideRecord":
        d = _check_keys(data, cls, where, what)
        reward = d.get("reward")
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise RunFolderError(f"{_where(where)}{what}.reward must be a number or null, found {reward!r}")
        return cls(reward=None if reward is None else float(reward), scores=_scores(d.get("scores"), where, f"{what}.scores"),
                   eval=_scores(d.get("eval"), where, f"{what}.eval"), text=d.get("text"), step=d.get("step"))


class _Flat:
    """to/from JSON for a record whose fields are plain JSON values, under the key ``_what``."""

    _what: ClassVar[str]

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> Any:
        return cls(**_check_keys(data, cls, where, cls._what))


@dataclass
class BudgetRecord(_Flat):
    """What a prompt spent (:meth:`milr.interfaces.BudgetLedger.snapshot`)."""

    _what: ClassVar[str] = "budget"
    text_tokens: int = 0
    image_tokens: int = 0
    generator_tokens: int = 0
    critic_calls: int = 0
    seconds: float = 0.0


@dataclass
class ImagesRecord(_Flat):
    """Image paths relative to the run folder."""

    _what: ClassVar[str] = "images"
    initial: Optional[str] = None
    final: Optional[str] = None
    steps: list[str] = field(default_factory=list)  # best image of each step (``run.save_steps``)


@dataclass
class PromptRecord:
    """One ``results.jsonl`` line: a prompt, what the search did, and the images' scores."""

    index: Optional[int] = None
    id: Optional[str] = None
    prompt: Optional[str] = None
    metadata: dict = field(default_factory=dict)
    initial: Optional[SideRecord] = None
    final: Optional[SideRecord] = None
    steps: Optional[int] = None
    skipped_nonfinite: int = 0
    budget: Optional[BudgetRecord] = None
    seconds: Optional[float] = None
    trace: list[dict] = field(default_factory=list)  # the search's own per-step entries
    curve: list[dict] = field(default_factory=list)  # per-step scores for curves.png (milr.diagnostics)
    guard: Optional[dict] = None  # milr.diagnostics.Guard.record(), with a guard only
    images: Optional[ImagesRecord] = None
    _where: str = field(default="", repr=False, compare=False)  # "FILE line N" for error messages

    @property
    def tag(self) -> str:
        """The GenEval category (``metadata.tag``), ``all`` without one."""
        return str((self.metadata or {}).get("tag", "all"))

    def need(self, *keys: str) -> "PromptRecord":
        """Self, or a one-line :class:`RunFolderError` naming the file, line and first missing key."""
        for k in keys:
            if getattr(self, k) is None:
                raise RunFolderError(f"{_where(self._where)}the run record has no {k!r} (an old or hand-made line?)")
        return self

    def side(self, which: str) -> SideRecord:
        """``initial`` or ``final``, required."""
        return getattr(self.need(which), which)

    def to_json(self) -> dict:
        """The line's JSON object, keys in the order run folders have always had them."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("_") or (f.name == "guard" and v is None):
                continue
            out[f.name] = v.to_json() if hasattr(v, "to_json") else v
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> "PromptRecord":
        d = dict(_check_keys(data, cls, where, "record"))
        for k, kind in (("initial", SideRecord), ("final", SideRecord)):
            if d.get(k) is not None:
                d[k] = kind.from_json(d[k], where, k)
        if d.get("budget") is not None:
            d["budget"] = BudgetRecord.from_json(d["budget"], where)
        if d.get("images") is not None:
            d["images"] = ImagesRecord.from_json(d["images"], where)
        for k, kind in (("metadata", dict), ("trace", list), ("curve", list)):
            if d.get(k) is None:
                d.pop(k, None)
            elif not isinstance(d[k], kind):
                raise RunFolderError(f"{_where(where)}{k} must be a{'n object' if kind is dict else ' list'}, "
                                     f"found {type(d[k]).__name__}")
        if d.get("id") is not None:
            d["id"] = str(d["id"])
        return cls(**d, _where=where)


def read_records(run_dir: Union[str, Path], skip_torn: bool = True) -> list[PromptRecord]:
    """Every line of ``run_dir/results.jsonl`` as a :class:`PromptRecord`.

    A line that is not JSON is the torn last line of a killed run: skipped when ``skip_torn`` and
    it is the last line, an error naming the file and line otherwise.
    """
    path = Path(run_dir) / "results.jsonl"
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no results.jsonl)")
    lines = path.read_text().splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            if skip_torn and n == len(lines):
                continue
            raise RunFolderError(f"{path} line {n}: not JSON (a damaged run record)") from None
        out.append(PromptRecord.from_json(data, f"{path} line {n}"))
    return out


__all__ = ["BudgetRecord", "ImagesRecord", "PromptRecord", "SideRecord", "read_records"]
