"""Ensembles of critics: weighted sum / min / product, per-member normalisation, tag gates, cascades.

MILR (Mi et al., arXiv 2509.22761) reports that the critic moves GenEval from 0.79 (self-reward)
to 0.87 with a *mixed* reward (an open-vocabulary detector for objects, counts and positions plus a
VQA model for colours, weighted per prompt type) -- this module generalises that MixedReward.

Combination (``mode``), over members ``i`` with weight ``w_i`` and normalised score ``n_i``:

* ``sum``:     ``sum_i w_i * n_i``;
* ``min``:     ``min_i w_i * n_i`` over members with ``w_i > 0`` (the weakest verdict decides);
* ``product``: ``prod_i n_i ** w_i`` over members with ``w_i > 0`` (a weighted geometric mean when
  the weights sum to 1); needs non-negative normalised scores.

Normalisation (``normalize``; one spec for all members, or ``{member_name: spec}``) puts scores
of different scales on one footing before weighting:

* ``"none"``;
* ``{"type": "affine", "scale": a, "shift": b}``: ``a * s + b`` (fixed, e.g. ImageReward's
  published mean/std);
* ``"zscore"``: ``(s - mean) / std`` of the member's scores on a reference set;
* ``"rank"``: the empirical CDF on the reference set, ``(#ref < s + 0.5 * #ref == s) / #ref``,
  in [0, 1] (robust to outliers and to any monotone rescaling of the member).

The reference set (``reference``) for ``zscore``/``rank`` is one of: a run folder written by the
runner (``results.jsonl``: its initial and final images with their prompts); a folder with a
``metadata.jsonl`` of ``{"file", "prompt", "metadata"?}`` lines next to the PNGs; a GenEval
image folder (``NNNNN/metadata.jsonl`` + ``NNNNN/samples/*.png``); a dict ``{"images": [B,3,H,W],
"prompts": [...], "metadata": [...]}``; or ``None`` -- then statistics are fitted on the **first
batch scored** and frozen (cheap, but a first batch of one image cannot give a spread: its std is
taken as 1). :meth:`Ensemble.fit` fits explicitly.

Gates (``gates: {tag: {member_name: weight}}``) override weights for prompts whose metadata tag is
``tag`` (e.g. weight a colour-aware member more on ``colors`` and ``color_attr`` prompts).

Cascades (``cascade: {cheap: member_name, keep_top: k}``): the cheap member scores every image;
within each prompt of the batch only the ``k`` best go to the other (expensive) members; every
other image gets, for each expensive member, the lowest normalised score of the kept images of its
prompt, so a filtered image never outranks a kept one under ``sum``/``min``/``product`` with
non-negative weights. Filtered rows are NaN in ``last_raw`` and ``False`` in ``last_scored``.

After each call ``last_components`` holds the normalised, unweighted score of every member
(``Tensor[B]`` by name), ``last_raw`` the raw scores, ``last_weights`` the per-row weights.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from milr.interfaces import Critic
from milr.registry import CRITICS

VERSION = "1"
MODES = ("sum", "min", "product")
NORMALIZERS = ("none", "affine", "zscore", "rank")
_STD_FLOOR = 1e-8


def _normalizer_spec(spec: Any, where: str) -> dict:
    if spec is None:
        return {"type": "none"}
    if isinstance(spec, str):
        if spec == "affine":
            raise ValueError(f"{where}: affine normalisation needs {{type: affine, scale: ..., shift: ...}}")
        if spec not in NORMALIZERS:
            raise ValueError(f"{where}: unknown normalisation {spec!r}; allowed: {', '.join(NORMALIZERS)}")
        return {"type": spec}
    if isinstance(spec, Mapping) and "type" in spec:
        t = spec["type"]
        if t not in NORMALIZERS:
            raise ValueError(f"{where}: unknown normalisation {t!r}; allowed: {', '.join(NORMALIZERS)}")
        extra = set(spec) - ({"type", "scale", "shift"} if t == "affine" else {"type"})
        if extra:
            raise ValueError(f"{where}: unexpected keys {sorted(extra)} for {t} normalisation")
        if t == "affine":
            return {"type": "affine", "scale": float(spec.get("scale", 1.0)), "shift": float(spec.get("shift", 0.0))}
        return {"type": t}
    raise ValueError(
        f"{where}: a normalisation is 'none', 'zscore', 'rank' or {{type: affine, scale, shift}}, got {spec!r}"
    )


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
        for line in (root / "results.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            for which in ("initial", "final"):
                rel = rec.get("images", {}).get(which)
                if rel:
                    items.append((root / rel, rec["prompt"], rec.get("metadata") or {}))
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

    def __init__(
        self,
        members: Sequence[Union[Critic, Mapping[str, Any]]],
        weights: Optional[Sequence[float]] = None,
        names: Optional[Sequence[str]] = None,
        mode: str = "sum",
        normalize: Union[str, Mapping[str, Any], None] = "none",
        reference: Any = None,
        gates: Optional[Mapping[str, Mapping[str, float]]] = None,
        cascade: Optional[Mapping[str, Any]] = None,
        model: Any = None,
        device: Optional[str] = None,
    ):
        if not members:
            raise ValueError("ensemble needs at least one member")
        if mode not in MODES:
            raise ValueError(f"ensemble mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
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
        if any(w < 0 for w in self.weights) and mode != "sum":
            raise ValueError(f"ensemble: negative weights are only meaningful with mode 'sum', got {self.weights}")
        chosen: list[str] = []
        for i, c in enumerate(critics):
            base = (names[i] if names is not None else None) or spec_names[i] or c.name
            chosen.append(base if base not in chosen else f"{base}#{i}")
        self.names = chosen

        # Normalisers: ensemble-wide spec, per-name mapping, or per-member spec.
        per_name: dict[str, Any] = {}
        default: Any = "none"
        if isinstance(normalize, Mapping) and "type" not in normalize:
            unknown = set(normalize) - set(self.names)
            if unknown:
                raise ValueError(f"ensemble normalize: unknown members {sorted(unknown)}; members: {self.names}")
            per_name = dict(normalize)
        else:
            default = normalize
        self.normalizers = [
            _normalizer_spec(spec_norms[i] if spec_norms[i] is not None else per_name.get(nm, default),
                             f"ensemble member {nm!r} normalize")
            for i, nm in enumerate(self.names)
        ]
        if mode == "product" and any(s["type"] == "zscore" for s in self.normalizers):
            raise ValueError("ensemble mode 'product' needs non-negative scores; z-scores are signed (use 'rank')")

        self.gates: dict[str, list[float]] = {}
        for tag, overrides in (gates or {}).items():
            if not isinstance(overrides, Mapping):
                raise ValueError(f"ensemble gates[{tag!r}]: expected {{member_name: weight}}, got {overrides!r}")
            unknown = set(overrides) - set(self.names)
            if unknown:
                raise ValueError(f"ensemble gates[{tag!r}]: unknown members {sorted(unknown)}; members: {self.names}")
            self.gates[tag] = [float(overrides.get(nm, w)) for nm, w in zip(self.names, self.weights)]
        if mode != "sum":
            for label, ws in [("weights", self.weights)] + [(f"gates[{t!r}]", g) for t, g in self.gates.items()]:
                if not any(w > 0 for w in ws):
                    raise ValueError(f"ensemble mode {mode!r}: {label} give no member a positive weight ({ws})")

        self.cascade: Optional[tuple[int, int]] = None
        if cascade:
            extra = set(cascade) - {"cheap", "keep_top"}
            if extra or "cheap" not in cascade or "keep_top" not in cascade:
                raise ValueError(f"ensemble cascade needs exactly {{cheap: member_name, keep_top: k}}, got {dict(cascade)}")
            if cascade["cheap"] not in self.names:
                raise ValueError(f"ensemble cascade: cheap member {cascade['cheap']!r} is not one of {self.names}")
            k = int(cascade["keep_top"])
            if k < 1:
                raise ValueError(f"ensemble cascade: keep_top must be >= 1, got {k}")
            self.cascade = (self.names.index(cascade["cheap"]), k)

        self.stats: list[Optional[tuple[Any, ...]]] = [None] * n
        self._fit_pending = any(s["type"] in ("zscore", "rank") for s in self.normalizers)
        if self._fit_pending and reference is not None:
            self.fit(*load_reference(reference))
        elif self._fit_pending:
            warnings.warn(
                "ensemble: zscore/rank normalisation without a reference set; statistics will be fitted on the "
                "first batch scored", stacklevel=2,
            )
        self.init_args = {
            "names": self.names, "weights": self.weights, "mode": mode, "normalizers": self.normalizers,
            "gates": {k: v for k, v in sorted(self.gates.items())}, "cascade": cascade and dict(cascade),
        }
        self.last_components: dict[str, torch.Tensor] = {}
        self.last_raw: dict[str, torch.Tensor] = {}
        self.last_weights: Optional[torch.Tensor] = None
        self.last_scored: dict[str, torch.Tensor] = {}

    # -- construction ----------------------------------------------------------------------------
    @staticmethod
    def _build_member(spec: Mapping[str, Any], i: int, model: Any, device: Optional[str]) -> Critic:
        if "name" not in spec:
            raise ValueError(f"ensemble member {i}: a spec needs 'name' (got keys {sorted(spec)})")
        cls = CRITICS.get(spec["name"])
        args = {k: v for k, v in spec.items() if k not in ("name", "weight", "id", "normalize")}
        params = inspect.signature(cls.__init__).parameters
        if "model" in params and "model" not in args:
            args["model"] = model
        if device is not None and "device" in params and "device" not in args:
            args["device"] = device
        critic = cls(**args)
        if not hasattr(critic, "init_args"):
            critic.init_args = {k: v for k, v in args.items() if k != "model"}
        return critic

    # -- normalisation -----------------------------------------------------------------------
    def fit(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None) -> None:
        """Fit zscore/rank statistics of every member that needs them on a reference set."""
        md = metadata if metadata is not None else [{} for _ in prompts]
        for i, spec in enumerate(self.normalizers):
            if spec["type"] in ("zscore", "rank"):
                raw = self.critics[i].score(images, prompts, md).detach().float().cpu()
                self._fit_member(i, raw)
        self._fit_pending = False

    def _fit_member(self, i: int, raw: torch.Tensor) -> None:
        raw = raw[~torch.isnan(raw)]
        if raw.numel() == 0:
            raise ValueError(f"ensemble: no reference scores to fit member {self.names[i]!r}")
        if self.normalizers[i]["type"] == "zscore":
            std = float(raw.std(unbiased=False)) if raw.numel() > 1 else 0.0
            if std < _STD_FLOOR:
                warnings.warn(f"ensemble: member {self.names[i]!r} has no spread on the reference set; using std 1")
                std = 1.0
            self.stats[i] = (float(raw.mean()), std)
        else:
            self.stats[i] = (torch.sort(raw).values,)

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

        if self._fit_pending:  # no reference set: fit on this first batch
            for i, spec in enumerate(self.normalizers):
                if spec["type"] in ("zscore", "rank"):
                    if int(scored[i].sum()) < 2:
                        warnings.warn(f"ensemble: fitting {self.names[i]!r} on a first batch of one image")
                    self._fit_member(i, raw[i][scored[i]])
            self._fit_pending = False

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
