"""The recipe's ``combine:`` block (arguments of :class:`milr.critics.ensemble.Ensemble`), checked
before any weights load.

Import-light (pydantic only, no torch), so ``milr show`` and ``milr run --dry-run`` can call
:func:`validate_combine`. Every problem comes back as ``(key path, one-line problem)``, e.g.
``("combine.gate.k", "found 4; at most the 3 members with a non-zero weight can agree")``.
Style after LightningCLI / pydantic settings: a flat mapping validated by a strict model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MODES = ("sum", "min", "product", "lcb")
NORMALIZERS = ("none", "affine", "zscore", "rank")
NEEDS_REFERENCE = ("zscore", "rank")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GateSpec(_Strict):
    """Agreement gate: accept a candidate that beats the incumbent only if ``k`` members agree."""

    k: int = Field(ge=1)
    margin: float = Field(default=0.0, ge=0)
    penalty: float = Field(default=0.0, ge=0)


class CascadeSpec(_Strict):
    cheap: str
    keep_top: int = Field(ge=1)


class NormalizeSpec(_Strict):
    type: Literal["none", "affine", "zscore", "rank"]
    scale: Optional[float] = None
    shift: Optional[float] = None
    reference: Optional[str] = None


class CombineSpec(_Strict):
    mode: Literal["sum", "min", "product", "lcb"] = "sum"
    kappa: Optional[float] = Field(default=None, ge=0)
    normalize: Union[str, dict[str, Any], None] = "none"
    reference: Any = None  # a run folder, a stats file, or (Python API) an image set
    gates: Optional[dict[str, dict[str, float]]] = None
    cascade: Optional[CascadeSpec] = None
    gate: Optional[GateSpec] = None


def _loc(err: dict) -> str:
    return ".".join(str(x) for x in err["loc"])


def _problem(err: dict) -> str:
    found = err.get("input")
    if err["type"] == "extra_forbidden":
        return "unknown key (allowed: " + ", ".join(_allowed(err["loc"])) + ")"
    if err["type"] == "missing":
        return "missing required key"
    if err["type"] == "literal_error":
        return f"found {found!r}; allowed: {err['ctx'].get('expected')}"
    return f"{err['msg'].removeprefix('Value error, ')} (found {found!r})"


def _allowed(loc: tuple) -> list[str]:
    model: type[BaseModel] = CombineSpec
    for part in loc[:-1]:
        ann = model.model_fields.get(str(part))
        sub = getattr(ann, "annotation", None) if ann else None
        for cand in (GateSpec, CascadeSpec):
            if sub is cand or (sub is not None and cand in getattr(sub, "__args__", ())):
                model = cand
    return list(model.model_fields)


def _normalizer(spec: Any, path: str, out: list[tuple[str, str]]) -> Optional[NormalizeSpec]:
    if spec is None:
        return NormalizeSpec(type="none")
    if isinstance(spec, str):
        if spec == "affine":
            out.append((path, "affine normalisation needs {type: affine, scale: ..., shift: ...}"))
        elif spec not in NORMALIZERS:
            out.append((path, f"unknown normalisation {spec!r}; allowed: {', '.join(NORMALIZERS)}"))
        else:
            return NormalizeSpec(type=spec)
        return None
    if not isinstance(spec, Mapping):
        out.append((path, f"found {spec!r}; a normalisation is 'none', 'zscore', 'rank' or {{type: ..., ...}}"))
        return None
    try:
        n = NormalizeSpec.model_validate(dict(spec))
    except ValidationError as e:
        for err in e.errors():
            loc = _loc(err)
            problem = "unknown key (allowed: type, scale, shift, reference)" if err["type"] == "extra_forbidden" else _problem(err)
            out.append((f"{path}.{loc}", problem))
        return None
    if n.type != "affine" and (n.scale is not None or n.shift is not None):
        out.append((path, f"scale/shift belong to affine normalisation, not {n.type}"))
    if n.type not in NEEDS_REFERENCE and n.reference is not None:
        out.append((f"{path}.reference", f"only zscore and rank use a reference, not {n.type}"))
    return n


def _check_reference(ref: Any, member: str, path: str, base_dir: Optional[Path], out: list[tuple[str, str]],
                     fix: Optional[Mapping] = None, key: str = "reference", own: bool = True) -> None:
    """The reference exists and, if it is a stats file or run folder, has scores of ``member``.

    A relative path is resolved against the working directory, then the recipe's folder; the
    resolved absolute path is written back into ``fix[key]`` so the runner uses what was checked.
    """
    if isinstance(ref, Mapping) and not own:
        return  # an in-memory image set (Python API): checked when the ensemble is built
    if not isinstance(ref, (str, Path)):
        out.append((path, f"expected a path to a stats file or a run folder, found {ref!r}"))
        return
    from milr.critics.normalize import is_score_reference, reference_stats, resolve_reference_path

    path_ = resolve_reference_path(ref, base_dir)
    if path_ is None:
        out.append((path, f"not found: {str(ref)!r} (a run folder or a stats file written by `milr calibrate`)"))
        return
    if fix is not None:
        fix[key] = str(path_)  # type: ignore[index]
    # The ensemble-wide reference may be a run folder without this member's recorded scores: the
    # member then scores the folder's images itself. A member's own reference must record it.
    if member and (path_.is_file() or (own and is_score_reference(path_))):
        try:
            reference_stats(path_, member)
        except (OSError, ValueError) as e:
            out.append((path, str(e)))
    elif member and not own and not (is_score_reference(path_) or (path_ / "metadata.jsonl").is_file()
                                     or any(path_.glob("*/metadata.jsonl"))):
        out.append((path, f"{str(path_)!r} holds neither recorded scores (a run folder) nor images to score "
                          "(metadata.jsonl, or GenEval's NNNNN/metadata.jsonl)"))
    elif member and own and not is_score_reference(path_):
        out.append((path, f"{str(path_)!r} is not a stats file or a run folder (results.jsonl); an image folder "
                          "can be the ensemble-wide combine.reference, scored by the members"))


def validate_combine(combine: Optional[Mapping[str, Any]], member_names: Optional[Sequence[str]] = None,
                     base_dir: Optional[Path] = None, weights: Optional[Sequence[float]] = None,
                     prefix: str = "combine") -> list[tuple[str, str]]:
    """Problems of a ``combine`` block as ``(key path, problem)``; empty when it is valid.

    ``member_names`` (the runner's names: the critic name, ``name#i`` for a repeat) and ``weights``
    enable the checks that refer to members. Reference paths are resolved in place (see
    :func:`_check_reference`).
    """
    out: list[tuple[str, str]] = []
    if combine is None:
        return out
    if not isinstance(combine, Mapping):
        return [(prefix, f"expected a mapping, found {combine!r}")]
    try:
        spec = CombineSpec.model_validate(dict(combine))
    except ValidationError as e:
        return [(f"{prefix}.{_loc(err)}", _problem(err)) for err in e.errors()]
    names = list(member_names) if member_names is not None else None
    ws = [float(w) for w in weights] if weights is not None else ([1.0] * len(names) if names else None)

    # Normalisation: one spec for all members, or {member: spec}.
    norm = spec.normalize
    per_member: dict[str, Optional[NormalizeSpec]] = {}
    if isinstance(norm, Mapping) and "type" not in norm:
        for nm, s in norm.items():
            p = f"{prefix}.normalize.{nm}"
            if names is not None and nm not in names:
                out.append((p, f"unknown members [{nm!r}]; members: {', '.join(names)}"))
                continue
            per_member[nm] = _normalizer(s, p, out)
        default = NormalizeSpec(type="none")
    else:
        default = _normalizer(norm, f"{prefix}.normalize", out)
    missing: dict[str, list[str]] = {}  # key path -> members without a reference
    for nm in names or []:
        n = per_member.get(nm, default)
        if n is None or n.type not in NEEDS_REFERENCE:
            continue
        own = n.reference is not None
        p = f"{prefix}.normalize.{nm}" if nm in per_member else f"{prefix}.normalize"
        if not own and spec.reference is None:
            missing.setdefault(p, []).append(nm)
            continue
        if own:
            src = combine["normalize"][nm] if nm in per_member else combine["normalize"]
            _check_reference(n.reference, nm, f"{p}.reference", base_dir, out, fix=src)
        else:
            _check_reference(spec.reference, nm, f"{prefix}.reference", base_dir, out, fix=combine, own=False)
        if n.type == "rank":
            _rank_needs_values(nm, p, base_dir, n.reference if own else spec.reference, out)
    for p, members in missing.items():
        t = (per_member.get(members[0]) or default).type  # type: ignore[union-attr]
        out.append((p, f"{t} normalisation of {', '.join(map(repr, members))} needs a reference (a stats file from "
                       f"`milr calibrate` or a run folder: {{type: {t}, reference: PATH}}); it is never fitted on the "
                       "images being searched"))
    if spec.mode == "product" and (default and default.type == "zscore" or any(
            s is not None and s.type == "zscore" for s in per_member.values())):
        out.append((f"{prefix}.mode", "mode 'product' needs non-negative scores; z-scores are signed (use 'rank')"))

    if spec.kappa is not None and spec.mode != "lcb":
        out.append((f"{prefix}.kappa", f"kappa is the lower-confidence-bound width: only with mode 'lcb', not {spec.mode!r}"))
    if ws is not None and spec.mode != "sum" and any(w < 0 for w in ws):
        out.append((f"{prefix}.mode", f"negative weights are only meaningful with mode 'sum' (weights {ws})"))

    # Tag gates, cascade, agreement gate: refer to members.
    rows = {"weights": ws} if ws is not None else {}
    for tag, overrides in (spec.gates or {}).items():
        if names is not None:
            bad = [m for m in overrides if m not in names]
            for m in bad:
                out.append((f"{prefix}.gates.{tag}.{m}", f"unknown members [{m!r}]; members: {', '.join(names)}"))
            if ws is not None and not bad:
                rows[f"gates.{tag}"] = [float(overrides.get(nm, w)) for nm, w in zip(names, ws)]
    if spec.cascade is not None and names is not None and spec.cascade.cheap not in names:
        out.append((f"{prefix}.cascade.cheap", f"cheap member {spec.cascade.cheap!r} is not one of the members: {', '.join(names)}"))
    if spec.mode != "sum":
        for label, row in rows.items():
            if row is not None and not any(w > 0 for w in row):
                out.append((f"{prefix}.{label}", f"mode {spec.mode!r}: no member has a positive weight ({row})"))
    if spec.gate is not None:
        for label, row in rows.items():
            voters = sum(1 for w in (row or []) if w != 0)
            if row is not None and spec.gate.k > voters:
                where = "" if label == "weights" else f" under {label}"
                out.append((f"{prefix}.gate.k", f"found {spec.gate.k}; at most the {voters} members with a non-zero weight{where} can agree"))
    return list(dict.fromkeys(out))  # an ensemble-wide problem is found once per member: report it once


def _rank_needs_values(member: str, path: str, base_dir: Optional[Path], ref: Any, out: list[tuple[str, str]]) -> None:
    """A stats file without ``values`` has moments only: enough for zscore, not for rank."""
    if not isinstance(ref, (str, Path)):
        return
    from milr.critics.normalize import read_stats_file, resolve_reference_path

    p = resolve_reference_path(ref, base_dir)
    if p is not None and p.is_file():
        try:
            st = read_stats_file(p).get(member)
        except (OSError, ValueError):
            return  # reported by _check_reference
        if st is not None and not st.values:
            out.append((path, f"rank normalisation of {member!r} needs the reference's scores ('values'); {str(p)!r} gives moments only"))
