"""Reward-hacking diagnostics: per-step curves, a hacking check for ``summary.md``, and a guard.

A search that maximises a learned critic can raise that critic's reward while the image gets no
better, or worse, by the truth: reward hacking ("reward model overoptimisation", Gao, Schulman &
Hilton, arXiv 2210.10760, measured it for language models; MILR, arXiv 2509.22761, Table 3, sees
self-reward gain nothing while its own reward rises). What shows it is a critic the search never
sees. This module provides three things:

* :class:`StepTracer` -- at every search step, the step's chosen image (the best candidate of the
  step) and the best-so-far image (what the search would return now) scored by each search critic
  member (raw and, for an ensemble, normalised as the ensemble combines them), the combined reward,
  and every held-out ``evaluate:`` critic. These extra scores never reach the search and never
  count in the budget ledger; members are cached critics, so re-scoring an image the ensemble just
  scored is a cache hit. The runner stores the list as ``"curve"`` in each result line.
* :func:`write_curves` (``curves.png``: one panel per GenEval category) and
  :func:`hacking_report` (the "Reward hacking check" section of ``summary.md``: where the search
  reward rose from the initial to the final image while an evaluation critic fell).
* :class:`Guard` -- early stopping on disagreement between the search reward and a held-out guard
  critic (recipe option ``guard:``; see :mod:`milr.recipe`). Guard scores are a real cost and are
  counted as critic calls in the ledger.

Figures in this module are means over prompts within a category; "overall" is the mean of the
category means (GenEval's aggregation, as in ``summary.md``'s table).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

from milr.interfaces import Candidate, Critic

# A drop smaller than this is float noise, not a fall.
_EPS = 1e-9


def finite(x: Any) -> Optional[float]:
    """``float(x)``, or None when it is missing or not finite (result lines stay strict JSON)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _tag(result: dict) -> str:
    return (result.get("metadata") or {}).get("tag", "all")


# ---------------------------------------------------------------------------------------------
# Per-step tracing
# ---------------------------------------------------------------------------------------------
ScoreFn = Callable[[Critic, Any], list]


class StepTracer:
    """Builds one prompt's ``curve``: one entry per search step (see the module docstring).

    ``score(critic, images [B,3,H,W]) -> list[float]`` must not touch the budget ledger.
    Entry: ``{"step", "reward", "scores", "norm"?, "eval", "candidate_step", "chosen": {...}}``
    where the top level describes the best-so-far image and ``chosen`` the step's best candidate;
    ``norm`` (members as the ensemble normalised them, unweighted) appears when the combined
    critic is an ensemble exposing ``last_components``.
    """

    def __init__(self, members: dict[str, Critic], evals: dict[str, Critic], combined: Critic, score: ScoreFn):
        self.members, self.evals, self.combined, self.score = members, evals, combined, score
        self.curve: list[dict] = []
        # normalised member scores of each chosen candidate, to describe it again once it is the best-so-far
        self._norms: list[tuple[Candidate, dict]] = []

    def _components(self, i: int) -> Optional[dict]:
        comps = getattr(self.combined, "last_components", None)
        if not isinstance(comps, dict) or not comps:
            return None
        try:
            return {k: finite(v[i]) for k, v in comps.items()}
        except (IndexError, TypeError):
            return None

    def observe(self, step: int, candidates: list[Candidate], rewards, best: Candidate, best_reward: float,
                extra: Optional[dict] = None) -> dict:
        """Record step ``step`` (0 = the first ask) after the search was told ``rewards``."""
        import torch

        r = [finite(x) for x in rewards]
        i = max(range(len(r)), key=lambda j: -math.inf if r[j] is None else r[j])
        chosen = candidates[i]
        norm = self._components(i)
        if norm is not None:
            self._norms.append((chosen, norm))
        same = best is chosen
        images = torch.stack([chosen.image] if same else [chosen.image, best.image])
        scores = {k: self.score(c, images) for k, c in self.members.items()}
        evals = {k: self.score(c, images) for k, c in self.evals.items()}

        def side(j: int, reward: Optional[float], cand: Candidate, nm: Optional[dict]) -> dict:
            out = {"reward": reward, "scores": {k: finite(v[j]) for k, v in scores.items()},
                   "eval": {k: finite(v[j]) for k, v in evals.items()}, "candidate_step": cand.step}
            if nm is not None:
                out["norm"] = nm
            return out

        best_norm = next((nm for c, nm in reversed(self._norms) if c is best), None)
        entry = {"step": step, **side(-1, finite(best_reward), best, best_norm),
                 "chosen": side(0, r[i], chosen, norm)}
        if extra:
            entry.update(extra)
        self.curve.append(entry)
        return entry


# ---------------------------------------------------------------------------------------------
# Early stopping on disagreement
# ---------------------------------------------------------------------------------------------
class Guard:
    """Stops a search when the search reward rises while a held-out critic says the image got worse.

    With ``R_0, G_0`` the search reward and the guard score of the initial image, and ``R_t, G_t``
    those of the best-so-far image after step ``t``, step ``t`` is *rejected* when
    ``R_t > R_0`` and ``G_t < G_0 - tolerance``. After ``patience`` consecutive rejected steps the
    search stops. Whether it stops or ends on its own, the candidate returned is the last
    best-so-far that was not rejected (the initial image at worst), so the guard never ends a
    search on an image it says got worse. Each distinct best-so-far image costs one guard call,
    counted in the ledger's ``critic_calls``.
    """

    def __init__(self, critic: Critic, patience: int = 2, tolerance: float = 0.0, name: str = "guard"):
        if patience < 1:
            raise ValueError(f"guard patience must be >= 1, got {patience}")
        if tolerance < 0:
            raise ValueError(f"guard tolerance must be >= 0, got {tolerance}")
        self.critic, self.patience, self.tolerance, self.name = critic, patience, tolerance, name
        self.start(lambda image: math.nan)

    def start(self, score_one: Callable[[Any], float]) -> None:
        """Reset for a new prompt; ``score_one(image [3,H,W]) -> float`` scores and counts one call."""
        self._score_one = score_one
        self._g0: Optional[float] = None
        self._r0: Optional[float] = None
        self._last: Optional[tuple[Candidate, float]] = None  # last best-so-far scored, with its guard score
        self._accepted: Optional[tuple[Candidate, float]] = None
        self._accepted_step = 0
        self._accepted_g: Optional[float] = None
        self.streak = 0
        self.stopped_at: Optional[int] = None
        self.history: list[dict] = []

    def _guard_score(self, cand: Candidate) -> float:
        if self._last is not None and self._last[0] is cand:
            return self._last[1]
        g = float(self._score_one(cand.image))
        self._last = (cand, g)
        return g

    def observe(self, step: int, initial: Candidate, initial_reward: float, best: Candidate, reward: float) -> bool:
        """Judge the best-so-far after step ``step``; True means stop the search now."""
        if self._g0 is None:
            self._g0, self._r0 = self._guard_score(initial), float(initial_reward)
            self._accepted, self._accepted_g = (initial, float(initial_reward)), self._g0
        g = self._guard_score(best)
        # A NaN guard score is no evidence the image got worse; it does not reject.
        rejected = float(reward) > self._r0 and g < self._g0 - self.tolerance
        if rejected:
            self.streak += 1
        else:
            self.streak = 0
            self._accepted, self._accepted_step, self._accepted_g = (best, float(reward)), step, g
        self.history.append({"step": step, "guard": finite(g), "rejected": rejected})
        if self.streak >= self.patience and self.stopped_at is None:
            self.stopped_at = step
            return True
        return False

    def returned(self) -> tuple[Candidate, float]:
        if self._accepted is None:
            raise RuntimeError("Guard.returned() before any observe()")
        return self._accepted

    def record(self) -> dict:
        """What the result line stores under ``"guard"``."""
        return {"critic": self.name, "patience": self.patience, "tolerance": self.tolerance,
                "stopped": self.stopped_at is not None, "stopped_at_step": self.stopped_at,
                "returned_step": self._accepted_step, "initial": finite(self._g0),
                "returned": finite(self._accepted_g),
                "history": self.history}


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------
def _curve_of(result: dict) -> list[dict]:
    """The per-step curve; for result lines without one, two points: initial and final."""
    curve = result.get("curve")
    if curve:
        return curve
    last = max(1, int(result.get("steps") or 1) - 1)
    return [{"step": 0, **result["initial"]}, {"step": last, **result["final"]}]


def _series_of(entry: dict, use_norm: bool) -> dict[str, Optional[float]]:
    out: dict[str, Optional[float]] = {"reward": finite(entry.get("reward"))}
    members = entry.get("norm") if use_norm else entry.get("scores")
    for k, v in (members or {}).items():
        out[f"member:{k}"] = finite(v)
    for k, v in (entry.get("eval") or {}).items():
        out[f"eval:{k}"] = finite(v)
    return out


def curve_means(results: list[dict]) -> tuple[dict[str, dict[str, list[Optional[float]]]], bool]:
    """``({tag: {series: [mean at step 0, 1, ...]}}, normalised)``.

    A prompt whose search stopped early keeps its last best-so-far value for the later steps (it
    is what the run returned). Members are the ensemble's normalised scores when every curve
    carries them, else raw scores.
    """
    curves = [(r, _curve_of(r)) for r in results]
    use_norm = bool(curves) and all(all("norm" in e for e in c) for _, c in curves)
    by_tag: dict[str, list[list[dict]]] = defaultdict(list)
    for r, c in curves:
        series_by_step: dict[int, dict] = {}
        for e in c:
            series_by_step[int(e.get("step", 0))] = _series_of(e, use_norm)
        by_tag[_tag(r)].append(_fill_steps(series_by_step))
    out: dict[str, dict[str, list[Optional[float]]]] = {}
    for tag, prompts in sorted(by_tag.items()):
        length = max(len(p) for p in prompts)
        names: list[str] = []
        for p in prompts:
            for s in p:
                names += [k for k in s if k not in names]
        out[tag] = {}
        for name in names:
            means = []
            for t in range(length):
                vals = [p[min(t, len(p) - 1)].get(name) for p in prompts]
                vals = [v for v in vals if v is not None]
                means.append(sum(vals) / len(vals) if vals else None)
            out[tag][name] = means
    return out, use_norm


def _fill_steps(series_by_step: dict[int, dict]) -> list[dict]:
    """Series at steps 0..max, carrying the last recorded value over missing steps."""
    steps = sorted(series_by_step)
    filled, last = [], series_by_step[steps[0]]
    for t in range(steps[-1] + 1):
        last = series_by_step.get(t, last)
        filled.append(last)
    return filled


def write_curves(run_dir: str | Path, results: list[dict]) -> Optional[Path]:
    """``curves.png``: one panel per category, mean reward curves along the steps (best-so-far image).

    Left axis: the combined search reward (black) and each search critic member (normalised as the
    ensemble combines them, unweighted, when the combined critic is an ensemble; raw otherwise).
    Right axis, dashed: each held-out ``evaluate:`` critic, raw.
    """
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means, use_norm = curve_means(results)
    counts = defaultdict(int)
    for r in results:
        counts[_tag(r)] += 1
    tags = list(means)
    ncols = min(3, len(tags))
    nrows = math.ceil(len(tags) / ncols)
    height = 3.6 * nrows + 1.1  # panels, plus a title above and the legend below
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, height), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names: list[str] = []
    for tag in tags:
        names += [k for k in means[tag] if k not in names and k != "reward"]
    colour_of = {k: colours[i % len(colours)] for i, k in enumerate(names)}
    members = [k for k in names if k.startswith("member:")]
    # One member and no normalisation: its raw score is the reward itself; draw it once.
    single = len(members) == 1 and not use_norm
    handles: dict[str, Any] = {}
    # One right-axis range for every panel (a [0, 1] critic keeps [0, 1]), so panels compare.
    ev = [v for tag in tags for k, vs in means[tag].items() if k.startswith("eval:") for v in vs if v is not None]
    ev_lim = None
    if ev:
        lo, hi = min(ev), max(ev)
        if lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        pad = 0.05 * ((hi - lo) or 1.0)
        ev_lim = (lo - pad, hi + pad)
    for ax, tag in zip(axes.flat, tags):
        data = means[tag]
        x = list(range(len(data["reward"])))
        (h,) = ax.plot(x, data["reward"], color="black", lw=2.2, marker="o", ms=3)
        handles.setdefault("combined search reward", h)
        for k in members:
            if k in data and not single:
                (h,) = ax.plot(x, data[k], color=colour_of[k], lw=1.4)
                handles.setdefault(f"{k[7:]} ({'normalised' if use_norm else 'raw'})", h)
        evals = [k for k in data if k.startswith("eval:")]
        if evals:
            ax2 = ax.twinx()
            for k in evals:
                (h,) = ax2.plot(x, data[k], color=colour_of[k], lw=2.0, ls="--", marker="s", ms=3)
                handles.setdefault(f"held out: {k[5:]} (raw, right axis)", h)
            if ev_lim is not None:  # every held-out score may be null (non-finite, skipped)
                ax2.set_ylim(*ev_lim)
            ax2.set_ylabel("held-out critic", fontsize=8)
            ax2.tick_params(labelsize=8)
        ax.set_title(f"{tag} (n={counts[tag]})", fontsize=10)
        ax.set_xlabel("search step (0 = initial generation)", fontsize=8)
        ax.set_ylabel("search reward" + (" / members (normalised)" if use_norm and not single else ""), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    title = "best-so-far image along the search: mean over each category's prompts"
    if not any(k.startswith("eval:") for k in names):
        title += "\nno held-out critic set (evaluate: is empty): nothing here can show reward hacking"
    fig.suptitle(title, fontsize=10)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.65 / height, 1, 1 - 0.45 / height))
    path = Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Hacking check
# ---------------------------------------------------------------------------------------------
def _delta(r: dict, get: Callable[[dict], Any]) -> Optional[float]:
    a, b = finite(get(r["initial"])), finite(get(r["final"]))
    return None if a is None or b is None else b - a


def _mean(xs: list[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def hacking_check(results: list[dict]) -> dict:
    """Final-minus-initial changes per category and overall (mean of category means).

    ``{"eval_critics": [...], "rows": {tag|"overall": {"n", "reward_delta",
    "eval": {name: {"delta", "fell", "rose", "n", "hacking"}}}}, "guard": {...}?}``;
    ``hacking`` is true when the search reward rose while the critic's mean fell.
    """
    evals: list[str] = []
    for r in results:
        for side in ("initial", "final"):
            evals += [k for k in (r[side].get("eval") or {}) if k not in evals]
    by_tag: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_tag[_tag(r)].append(r)
    rows: dict[str, dict] = {}
    for tag, rs in sorted(by_tag.items()):
        row = {"n": len(rs), "reward_delta": _mean([_delta(r, lambda s: s.get("reward")) for r in rs]), "eval": {}}
        for k in evals:
            ds = [d for d in (_delta(r, lambda s, k=k: (s.get("eval") or {}).get(k)) for r in rs) if d is not None]
            row["eval"][k] = {"delta": _mean(ds), "fell": sum(d < -_EPS for d in ds),
                              "rose": sum(d > _EPS for d in ds), "n": len(ds)}
        rows[tag] = row
    if rows:
        overall = {"n": len(results), "reward_delta": _mean([r["reward_delta"] for r in rows.values()]), "eval": {}}
        for k in evals:
            cells = [r["eval"][k] for r in rows.values()]
            overall["eval"][k] = {"delta": _mean([c["delta"] for c in cells]), "fell": sum(c["fell"] for c in cells),
                                  "rose": sum(c["rose"] for c in cells), "n": sum(c["n"] for c in cells)}
        rows["overall"] = overall
    for row in rows.values():
        for cell in row["eval"].values():
            cell["hacking"] = bool(row["reward_delta"] is not None and row["reward_delta"] > _EPS
                                   and cell["delta"] is not None and cell["delta"] < -_EPS)
    out: dict[str, Any] = {"eval_critics": evals, "rows": rows}
    guarded = [r["guard"] for r in results if isinstance(r.get("guard"), dict)]
    if guarded:
        out["guard"] = {"critic": guarded[0].get("critic"), "prompts": len(guarded),
                        "stopped": sum(bool(g.get("stopped")) for g in guarded)}
    return out


def _signed(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def hacking_report(results: list[dict]) -> str:
    """The "Reward hacking check" section of ``summary.md`` (Markdown)."""
    check = hacking_check(results)
    lines = ["## Reward hacking check", ""]
    if not results:
        return "\n".join(lines + ["(no results)"])
    lines.append("Final image minus initial image, mean over each category's prompts (overall: mean of "
                 "category means). A held-out critic that falls while the search reward rises means the "
                 "search may be exploiting its critic rather than improving the image.")
    lines.append("")
    if not check["eval_critics"]:
        lines.append("No held-out critic was set (`evaluate:` is empty), so this run cannot show reward hacking: "
                     "add e.g. `evaluate: [{name: world_oracle}]` or run `milr agree` on this folder.")
        for tag, row in check["rows"].items():
            lines.append(f"- {tag}: search reward {_signed(row['reward_delta'])} (n={row['n']})")
        return "\n".join(lines + _guard_lines(check))
    flagged = []
    for tag, row in check["rows"].items():
        parts, hacked = [], []
        for k, c in row["eval"].items():
            parts.append(f"{k} {_signed(c['delta'])} ({c['fell']} of {c['n']} prompts fell, {c['rose']} rose)")
            if c["hacking"]:
                hacked.append(k)
        verdict = (f": the search may be hacking the critic ({', '.join(hacked)} fell)" if hacked
                   else ": no held-out critic fell on average")
        lines.append(f"- {tag}: search reward {_signed(row['reward_delta'])}, " + ", ".join(parts) + verdict)
        if hacked and tag != "overall":
            flagged.append(tag)
    lines.append("")
    if flagged:
        lines.append(f"**Possible reward hacking** in {', '.join(flagged)}: the search reward rose while a "
                     "held-out critic fell. See curves.png for where along the steps it happened.")
    else:
        lines.append("No category where the search reward rose while a held-out critic fell.")
    return "\n".join(lines + _guard_lines(check))


def _guard_lines(check: dict) -> list[str]:
    if "guard" not in check:
        return []
    g = check["guard"]
    return ["", f"Guard ({g['critic']}) stopped the search early on {g['stopped']} of {g['prompts']} prompts."]
