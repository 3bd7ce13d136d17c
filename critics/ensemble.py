"""Ensembles of critics: weighted sum / min / product / lower-confidence bound, per-member
normalisation from a reference set, an agreement gate, tag gates, cascades.

MILR (Mi et al., arXiv 2509.22761) reports that the critic moves GenEval from 0.79 (self-reward)
to 0.87 with a *mixed* reward (an open-vocabulary detector for objects, counts and positions plus a
VQA model for colours, weighted per prompt type) -- this module generalises that MixedReward. The
rules that resist reward hacking (``lcb``, the agreement gate) live in
:mod:`milr.critics.ensemble_rules`; the ``combine:`` schema in :mod:`milr.critics.ensemble_config`;
reference statistics and ``milr calibrate`` in :mod:`milr.critics.normalize`.

Combination (``mode``), over members ``i`` with weight ``w_i`` and normalised score ``n_i``:

* ``sum``:     ``sum_i w_i * n_i``;
* ``min``:     ``min_i w_i * n_i`` over members with ``w_i > 0`` (the weakest verdict decides);
* ``product``: ``prod_i n_i ** w_i`` over members with ``w_i > 0`` (a weighted geometric mean when
  the weights sum to 1); needs non-negative normalised scores;
* ``lcb``:     ``m - kappa * s``: the ``w``-weighted mean of the ``n_i`` (``w_i > 0``) minus ``kappa``
  (default 1) times their weighted standard deviation across members.

Normalisation (``normalize``; one spec for all members, or ``{member_name: spec}``) puts scores
of different scales on one footing before weighting:

* ``"none"``;
* ``{"type": "affine", "scale": a, "shift": b}``: ``a * s + b`` (fixed, e.g. ImageReward's
  published mean/std);
* ``{"type": "zscore", "reference": R}``: ``(s - mean) / std`` of the member's scores on R;
* ``{"type": "rank", "reference": R}``: the empirical CDF on R, ``(#ref < s + 0.5 * #ref == s) /
  #ref``, in [0, 1] (robust to outliers and to any monotone rescaling of the member).

The reference ``R`` of ``zscore``/``rank`` -- a member's own ``reference``, else the ensemble-wide
``reference`` -- is a stats file written by ``milr calibrate`` or a run folder, whose *recorded*
scores of its initial images are used (:mod:`milr.critics.normalize`). The ensemble-wide
``reference`` may also be an image set the members score once at construction: a run folder whose
records lack the member, a folder with a ``metadata.jsonl`` of ``{"file", "prompt", "metadata"?}``
lines next to the PNGs, a GenEval image folder (``NNNNN/metadata.jsonl`` + ``NNNNN/samples/*.png``),
or a dict ``{"images": [B,3,H,W], "prompts": [...], "metadata": [...]}``. Without a reference
``zscore``/``rank`` is an error: statistics are never fitted on the images being searched (one
image has no spread, and the scale would follow the search's first draw).

Agreement gate (``gate: {k, margin, penalty}``): a candidate whose combined score beats the
prompt's incumbent keeps it only if ``k`` members individually prefer it; otherwise its reward is
capped at the incumbent's (:class:`~milr.critics.ensemble_rules.AgreementGate` defines it exactly).
The gate is stateful per prompt, so a gated ensemble must not sit behind a score cache.

Gates (``gates: {tag: {member_name: weight}}``) override weights for prompts whose metadata tag is
``tag`` (e.g. weight a colour-aware member more on ``colors`` and ``color_attr`` prompts).

Cascades (``cascade: {cheap: member_name, keep_top: k}``): the cheap member scores every image;
within each prompt of the batch only the ``k`` best go to the other (expensive) members; every
other image gets, for each expensive member, the lowest normalised score of the kept images of its
prompt, so a filtered image never outranks a kept one under ``sum``/``min``/``product`` with
non-negative weights. Filtered rows are NaN in ``last_raw`` and ``False`` in ``last_scored``.

After each call ``last_components`` holds the normalised, unweighted score of every member
(``Tensor[B]`` by name), ``last_raw`` the raw scores, ``last_weights`` the per-row weights and, with
a gate, ``last_accepted`` which rows kept their own combined score.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import torch

from milr.critics.ensemble_config import MODES, NEEDS_REFERENCE, NORMALIZERS, validate_combine
from milr.critics.ensemble_rules import AgreementGate, lower_confidence_bound
from milr.critics.normalize import (CriticStats, is_score_reference, read_run_scores, reference_stats,
                                   resolve_reference_path)
from milr.interfaces import Critic
from milr.registry import CRITICS

VERSION = "2"  # 2: lcb, agreement gate, reference statistics from recorded scores
_STD_FLOOR = 1e-8
__all__ = ["Ensemble", "load_reference", "MODES", "NORMALIZERS"]


def _normalizer_spec(spec: Any) -> dict:
    """A validated normalisation spec as a dict with its defaults filled in."""
    if spec is None:
        return {"type": "none"}
    if isinstance(spec, str):
        return {"type": spec}
    t = spec["type"]
    if t == "affine":
        return {"type": "affine", "scale": float(spec.get("scale", 1.0)), "shift": float(spec.get("shift", 0.0))}
    out = {"type": t}
    if t in NEEDS_REFERENCE and spec.get("reference") is not None:
        out["reference"] = str(spec["reference"])
    return out


def load_reference(reference: Any) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Images ``[N, 3, H, W]``, prompts and metadata of a reference set (see the module docstring)."""
    if isinstance(reference, Mapping):
        images = reference.get("images")
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        prompts = list(reference.get("prompts", []))
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(prompts) != images.shape[0]:
            raise ValueError("reference dict needs images [N, 3, H, W] and one prompt per image")
        md = list(reference.get("metadata") or [{} for _ in prompts])
        if len(md) != len(prompts):
            raise ValueError(f"reference dict: {len(prompts)} prompts but {len(md)} metadata items")
        return images.float(), prompts, md
    root = Path(str(reference)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"reference folder {root} does not exist")
    items: list[tuple[Path, str, dict]] = []
    if (root / "results.jsonl").is_file():  # a run folder of the runner
        for rec in read_run_scores(root):
            items += [(root / rec.images[w], rec.prompt, rec.metadata) for w in ("initial", "final") if w in rec.images]
    elif (root / "metadata.jsonl").is_file():
        for n, line in enumerate((root / "metadata.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "file" not in rec or "prompt" not in rec:
                raise ValueError(f"{root / 'metadata.jsonl'} line {n}: needs 'file' and 'prompt'")
            items.append((root / rec["file"], rec["prompt"], rec.get("metadata") or {}))
    else:  # GenEval layout
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file()):
            md = json.loads((sub / "metadata.jsonl").read_text().splitlines()[0])
            for png in sorted((sub / "samples").glob("*.png")):
                if png.stem.isdigit():
                    items.append((png, md["prompt"], md))
    if not items:
        raise ValueError(
            f"reference folder {root} holds no images: expected a run folder (results.jsonl), a metadata.jsonl of "
            f"{{file, prompt}} lines, or GenEval's NNNNN/metadata.jsonl + samples/*.png layout"
        )
    import numpy as np
    from PIL import Image

    tensors = []
    for path, _, _ in items:
        if not path.is_file():
            raise FileNotFoundError(f"reference image {path} does not exist")
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        tensors.append(torch.from_numpy(arr).permute(2, 0, 1))
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"reference images in {root} have different sizes {sorted(shapes)}")
    return torch.stack(tensors), [p for _, p, _ in items], [m for _, _, m in items]


@CRITICS.register("ensemble")
class Ensemble(Critic):
    """Combine several critics into one reward (higher is better).

    ``members``: critic objects, or specs ``{name, weight?, id?, normalize?, **args}`` built
    through the critic registry (a member whose constructor takes ``model`` receives ``model``).
    ``weights``/``names`` (one per member) override the specs' ``weight``/``id``; names default to
    the registry names, de-duplicated as ``name#i``.
    """

    # Arguments that hold component specs: the recipe validator checks each member against its
    # critic's signature before anything loads (milr.recipe.validate_component_args).
    component_args = {"members": "critics"}

    def __init__(
        self,
        members: Sequence[Union[Critic, Mapping[str, Any]]],
        weights: Optional[Sequence[float]] = None,
        names: Optional[Sequence[str]] = None,
        mode: Literal["sum", "min", "product", "lcb"] = "sum",
        normalize: Union[str, Mapping[str, Any], None] = "none",
        reference: Any = None,
        gates: Optional[Mapping[str, Mapping[str, float]]] = None,
        cascade: Optional[Mapping[str, Any]] = None,
        gate: Optional[Mapping[str, Any]] = None,
        kappa: Optional[float] = None,
        model: Any = None,
        device: Optional[str] = None,
    ):
        if not members:
            raise ValueError("ensemble needs at least one member")
        critics: list[Critic] = []
        spec_weights: list[float] = []
        spec_names: list[Optional[str]] = []
        spec_norms: list[Any] = []
        for i, m in enumerate(members):
            if isinstance(m, Critic):
                critics.append(m)
                spec_weights.append(1.0)
                spec_names.append(None)
                spec_norms.append(None)
            elif isinstance(m, Mapping):
                critics.append(self._build_member(m, i, model, device))
                spec_weights.append(float(m.get("weight", 1.0)))
                spec_names.append(m.get("id"))
                spec_norms.append(m.get("normalize"))
            else:
                raise TypeError(f"ensemble member {i}: expected a Critic or a spec mapping, got {type(m).__name__}")
        n = len(critics)
        if weights is not None and len(weights) != n:
            raise ValueError(f"ensemble: {len(weights)} weights for {n} members")
        if names is not None and len(names) != n:
            raise ValueError(f"ensemble: {len(names)} names for {n} members")
        self.critics = critics
        self.weights = [float(w) for w in (weights if weights is not None else spec_weights)]
        chosen: list[str] = []
        for i, c in enumerate(critics):
            base = (names[i] if names is not None else None) or spec_names[i] or c.name
            chosen.append(base if base not in chosen else f"{base}#{i}")
        self.names = chosen

        # Member specs' own `normalize` entries join the per-name mapping, so one check covers all.
        if any(x is not None for x in spec_norms):
            shared = normalize if not (isinstance(normalize, Mapping) and "type" not in normalize) else None
            per = dict(normalize) if shared is None and isinstance(normalize, Mapping) else {}
            for nm, own in zip(self.names, spec_norms):
                if own is not None:
                    per[nm] = own
                elif shared is not None:
                    per[nm] = shared
            normalize = per
        combine = {"mode": mode, "normalize": normalize, "reference": reference, "gates": gates,
                   "cascade": cascade, "gate": gate, "kappa": kappa}
        # A copy (the image-set reference aside): validation writes resolved reference paths into it.
        combine = {k: (copy.deepcopy(v) if k != "reference" else v) for k, v in combine.items() if v is not None}
        problems = validate_combine(combine, self.names, weights=self.weights, prefix="ensemble")
        if problems:
            raise ValueError("; ".join(f"{path}: {problem}" for path, problem in problems))
        normalize, reference = combine.get("normalize", "none"), combine.get("reference")
        self.mode = mode
        self.kappa = 1.0 if kappa is None else float(kappa)
        per_name = dict(normalize) if isinstance(normalize, Mapping) and "type" not in normalize else {}
        default = "none" if per_name else normalize
        self.normalizers = [_normalizer_spec(per_name.get(nm, default)) for nm in self.names]

        self.gates: dict[str, list[float]] = {
            tag: [float(overrides.get(nm, w)) for nm, w in zip(self.names, self.weights)]
            for tag, overrides in (gates or {}).items()
        }
        self.cascade: Optional[tuple[int, int]] = None
        if cascade:
            self.cascade = (self.names.index(cascade["cheap"]), int(cascade["keep_top"]))
        self.gate = AgreementGate(**gate) if gate else None

        self.stats: list[Optional[tuple[Any, ...]]] = [None] * n
        self._load_stats(reference)
        self.init_args = {
            "names": self.names, "weights": self.weights, "mode": mode, "normalizers": self.normalizers,
            "gates": {k: v for k, v in sorted(self.gates.items())}, "cascade": cascade and dict(cascade),
        }
        if mode == "lcb":
            self.init_args["kappa"] = self.kappa
        if gate:
            self.init_args["gate"] = {"k": self.gate.k, "margin": self.gate.margin, "penalty": self.gate.penalty}
        self.last_components: dict[str, torch.Tensor] = {}
        self.last_raw: dict[str, torch.Tensor] = {}
        self.last_weights: Optional[torch.Tensor] = None
        self.last_scored: dict[str, torch.Tensor] = {}
        self.last_accepted: Optional[torch.Tensor] = None

    def _load_stats(self, reference: Any) -> None:
        """Statistics of every zscore/rank member: recorded scores or a stats file, else an image set."""
        to_score: list[int] = []
        for i, spec in enumerate(self.normalizers):
            if spec["type"] not in NEEDS_REFERENCE:
                continue
            ref = spec.get("reference", reference)
            path = resolve_reference_path(ref) if isinstance(ref, (str, Path)) else None
            if path is not None and (spec.get("reference") is not None or path.is_file()
                                     or self._records(path, self.names[i])):
                self._set_stats(i, reference_stats(path, self.names[i]))
            else:
                to_score.append(i)
        if to_score:  # the ensemble-wide reference is an image set: those members score it once
            images, prompts, md = load_reference(reference)
            for i in to_score:
                self._fit_member(i, self.critics[i].score(images, prompts, md).detach().float().cpu())

    @staticmethod
    def _records(path: Path, member: str) -> bool:
        if not is_score_reference(path):
            return False
        try:
            reference_stats(path, member)
            return True
        except ValueError:
            return False

    def _set_stats(self, i: int, st: CriticStats) -> None:
        if self.normalizers[i]["type"] == "zscore":
            std = st.std
            if std < _STD_FLOOR:
                warnings.warn(f"ensemble: member {self.names[i]!r} has no spread on the reference set; using std 1")
                std = 1.0
            self.stats[i] = (st.mean, std)
        else:
            if not st.values:
                raise ValueError(f"ensemble: rank normalisation of {self.names[i]!r} needs the reference's scores, not just moments")
            self.stats[i] = (torch.tensor(st.values, dtype=torch.float32),)

    def reset(self) -> None:
        """Forget the agreement gate's incumbents (call between two searches on the same prompt)."""
        if self.gate is not None:
            self.gate.reset()

    # -- construction ----------------------------------------------------------------------------
    @staticmethod
    def _build_member(spec: Mapping[str, Any], i: int, model: Any, device: Optional[str]) -> Critic:
        """A member from its spec, through the component factory (model/device injected, arguments recorded)."""
        from milr.factory import build_component

        if "name" not in spec:
            raise ValueError(f"ensemble member {i}: a spec needs 'name' (got keys {sorted(spec)})")
        args = {k: v for k, v in spec.items() if k not in ("name", "weight", "id", "normalize")}
        return build_component(CRITICS, spec["name"], args, model=model, device=device)

    # -- normalisation -----------------------------------------------------------------------
    def fit(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> None:
        """Refit zscore/rank statistics of every member that needs them on another reference set."""
        md = metadata if metadata is not None else [{} for _ in prompts]
        for i, spec in enumerate(self.normalizers):
            if spec["type"] in NEEDS_REFERENCE:
                self._fit_member(i, self.critics[i].score(images, prompts, md).detach().float().cpu())

    def _fit_member(self, i: int, raw: torch.Tensor) -> None:
        raw = raw[~torch.isnan(raw)]
        if raw.numel() == 0:
            raise ValueError(f"ensemble: no reference scores to fit member {self.names[i]!r}")
        self._set_stats(i, CriticStats.from_scores(raw.tolist()))

    def _normalize(self, i: int, raw: torch.Tensor) -> torch.Tensor:
        spec = self.normalizers[i]
        t = spec["type"]
        if t == "none":
            return raw
        if t == "affine":
            return raw * spec["scale"] + spec["shift"]
        if self.stats[i] is None:
            raise RuntimeError(f"ensemble member {self.names[i]!r} needs {t} statistics; call fit() first")
        if t == "zscore":
            mean, std = self.stats[i]
            return (raw - mean) / std
        ref = self.stats[i][0]
        below = torch.searchsorted(ref, raw.contiguous(), right=False).float()
        upto = torch.searchsorted(ref, raw.contiguous(), right=True).float()
        return (below + 0.5 * (upto - below)) / ref.numel()

    # -- scoring -----------------------------------------------------------------------------
    def _row_weights(self, metadata: list[dict]) -> torch.Tensor:
        rows = [self.gates.get((md or {}).get("tag"), self.weights) for md in metadata]
        return torch.tensor(rows, dtype=torch.float32)  # [B, M]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> torch.Tensor:
        B = images.shape[0]
        md = list(metadata) if metadata is not None else [{} for _ in range(B)]
        if len(prompts) != B or len(md) != B:
            raise ValueError(f"ensemble: {B} images, {len(prompts)} prompts, {len(md)} metadata items")
        M = len(self.critics)
        raw = torch.full((M, B), float("nan"))
        scored = torch.zeros((M, B), dtype=torch.bool)
        if self.cascade is None:
            for i, c in enumerate(self.critics):
                raw[i] = c.score(images, prompts, md).detach().float().cpu()
                scored[i] = True
        else:
            cheap, k = self.cascade
            raw[cheap] = self.critics[cheap].score(images, prompts, md).detach().float().cpu()
            scored[cheap] = True
            keep = self._top_k_per_prompt(raw[cheap], prompts, k)
            idx = keep.nonzero().flatten()
            sub_prompts = [prompts[j] for j in idx.tolist()]
            sub_md = [md[j] for j in idx.tolist()]
            for i, c in enumerate(self.critics):
                if i != cheap:
                    raw[i, idx] = c.score(images[idx.to(images.device)], sub_prompts, sub_md).detach().float().cpu()
                    scored[i, idx] = True

        norm = torch.stack([self._normalize(i, raw[i]) for i in range(M)])  # NaN where not scored
        if self.cascade is not None:  # unscored rows: the lowest kept score of their prompt
            for group in self._groups(prompts):
                g = torch.tensor(group)
                for i in range(M):
                    vals = norm[i, g]
                    ok = scored[i, g]
                    if ok.any() and not ok.all():
                        vals[~ok] = vals[ok].min()
                        norm[i, g] = vals
        w = self._row_weights(md)  # [B, M]
        active = w > 0
        if self.mode == "sum":
            total = (w * norm.T).sum(dim=1)
        elif self.mode == "min":
            weighted = torch.where(active, w * norm.T, torch.full_like(w, float("inf")))
            total = weighted.min(dim=1).values
        elif self.mode == "lcb":
            total = lower_confidence_bound(norm, w, self.kappa)
        else:
            if (norm.T[active] < 0).any():
                bad = [self.names[i] for i in range(M) if (norm[i][active[:, i]] < 0).any()]
                raise ValueError(
                    f"ensemble mode 'product' got negative normalised scores from {bad}; use normalize 'rank' or an "
                    f"affine shift that makes them non-negative"
                )
            total = torch.where(active, norm.T.clamp(min=0) ** w, torch.ones_like(w)).prod(dim=1)
        self.last_raw = {nm: raw[i].clone() for i, nm in enumerate(self.names)}
        self.last_components = {nm: norm[i].clone() for i, nm in enumerate(self.names)}
        self.last_scored = {nm: scored[i].clone() for i, nm in enumerate(self.names)}
        self.last_weights = w
        if self.gate is not None:
            keys = [AgreementGate.key(p, m) for p, m in zip(prompts, md)]
            total = self.gate.apply(keys, norm, w, total)
            self.last_accepted = self.gate.last_accepted
        return total.to(images.device)

    @staticmethod
    def _groups(prompts: list[str]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for j, p in enumerate(prompts):
            groups.setdefault(p, []).append(j)
        return list(groups.values())

    def _top_k_per_prompt(self, cheap: torch.Tensor, prompts: list[str], k: int) -> torch.Tensor:
        keep = torch.zeros(len(prompts), dtype=torch.bool)
        for group in self._groups(prompts):
            g = torch.tensor(group)
            vals = torch.nan_to_num(cheap[g], nan=-float("inf"))
            top = torch.argsort(vals, descending=True, stable=True)[:k]
            keep[g[top]] = True
        return keep

    def identity(self) -> str:
        members = [c.identity() for c in self.critics]
        stats = [None if s is None else [float(x) for x in (s[0] if len(s) == 1 else s)] for s in self.stats]
        stats_hash = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
        return f"ensemble:v{VERSION}:{json.dumps(self.init_args, sort_keys=True, default=str)}:{members}:stats={stats_hash}"
