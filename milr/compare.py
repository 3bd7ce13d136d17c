"""``milr compare``: several search strategies on one prompt suite at a matched compute budget.

MILR (arXiv 2509.22761) compares itself with Best-of-N only loosely (N = T, Fig. 6). Here every
strategy runs through the same runner (:func:`milr.runner.run_recipe`) on the same prompts and
seeds, so every strategy's first candidate is the same ordinary generation, and the strategies
are capped at the same generator-token budget (text + image tokens, both CFG rows counted):

* if the recipe or the overrides set ``run.budget.generator_tokens``, every strategy gets it;
* otherwise the first strategy runs uncapped and its spend sets the per-prompt cap of the others:
  ``match_budget="max"`` (default) its largest per-prompt spend, i.e. its full allowance (a
  strategy that stops early on easy prompts, like MILR at a threshold, does not hand the others
  a smaller allowance on the hard ones); ``"mean"`` its mean spend; ``False`` no cap.

Under a cap, a strategy whose length is set by a count (``steps`` of ``reinforce``, ``n`` of
``best_of_n``, ``generations`` of ``cma_es``) gets a large count unless its spec sets one, so the
budget, not the count, ends it.

Search specs (Python list, or the comma-separated ``--searches`` of the CLI)::

    reinforce                               # registry name
    reinforce(mode=text,steps=20)           # with arguments (values parsed as YAML)
    milr-text=reinforce(mode=text)          # with a label for the table

Outputs in the output folder: ``compare.md`` and ``compare.json`` (per category and overall, with
95% bootstrap intervals from :func:`scipy.stats.bootstrap`; "overall" is the mean of the category
means, GenEval's aggregation, bootstrapped over prompts), ``compare.png`` (score against generator
tokens: the anytime best-so-far critic reward, and the final metric with its interval), and one
run folder per strategy under ``runs/``. The metric is the first ``evaluate:`` critic's score of
the returned image when the recipe has one (the exact scorer, say, while searching with another
critic), else the search critic's reward. The "base" row is the ordinary generation (every
strategy's first candidate) under the same metric.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from milr.run_record import PromptRecord

_COUNT_ARGS = {"reinforce": "steps", "best_of_n": "n", "cma_es": "generations"}
_UNCAPPED_COUNT = 100_000
_SPEC = re.compile(r"^(?:(?P<label>[\w\-.]+)=)?(?P<name>[\w\-.:]+)(?:\((?P<args>.*)\))?$", re.S)


def _split_top_level(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


def parse_search_specs(specs: Union[str, Sequence[Union[str, dict]]]) -> list[dict]:
    """Specs to ``[{"label", "name", "args"}]``; see the module docstring for the syntax."""
    import yaml

    if isinstance(specs, str):
        items: list[Union[str, dict]] = _split_top_level(specs)
    else:
        strings = [s for s in specs if isinstance(s, str)]
        # The CLI splits on every comma; commas inside parentheses are rejoined here.
        items = _split_top_level(",".join(strings)) if strings else []
        items += [s for s in specs if isinstance(s, dict)]
    out = []
    for item in items:
        if isinstance(item, dict):
            if "name" not in item:
                raise ValueError(f"a search spec mapping needs a 'name': {item!r}")
            args = {k: v for k, v in item.items() if k not in ("name", "label")}
            out.append({"label": item.get("label") or item["name"], "name": item["name"], "args": args})
            continue
        m = _SPEC.match(item)
        if not m:
            raise ValueError(f"cannot read search spec {item!r}; expected NAME, NAME(key=value,...) or LABEL=NAME(...)")
        args: dict[str, Any] = {}
        if m.group("args"):
            for part in _split_top_level(m.group("args")):
                key, eq, value = part.partition("=")
                if not eq or not key.strip():
                    raise ValueError(f"search spec {item!r}: argument {part!r} is not key=value")
                args[key.strip()] = yaml.safe_load(value.strip()) if value.strip() else ""
        out.append({"label": m.group("label") or item, "name": m.group("name"), "args": args})
    labels = [s["label"] for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"search labels must be unique, got {labels}")
    if not out:
        raise ValueError("no search strategies to compare")
    return out


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def _mean_of_tag_means(values, tags, weights: Optional[dict] = None) -> float:
    import numpy as np

    values, tags = np.asarray(values, dtype=float), np.asarray(tags)
    present = np.unique(tags)
    means = np.array([values[tags == t].mean() for t in present])
    if weights is None:
        return float(np.mean(means))
    # a benchmark's fixed category weights (WISE), renormalised over the categories present
    w = np.array([weights[str(t)] for t in present], dtype=float)
    return float((w * means).sum() / w.sum())


def bootstrap_interval(values: Sequence[float], tags: Optional[Sequence[str]] = None, confidence: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0, weights: Optional[dict] = None) -> tuple[float, float, float]:
    """(estimate, low, high): the mean (or, with ``tags``, the mean of tag means, weighted by
    ``weights[tag]`` when given) and its percentile-bootstrap interval over prompts. A constant
    sample has a zero-width interval; a single value has none (NaN)."""
    import numpy as np
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    if tags is None:
        est = float(v.mean())
        data: tuple = (v,)
        stat = lambda x, axis=-1: np.mean(x, axis=axis)  # noqa: E731
        kw: dict[str, Any] = {"vectorized": True}
    else:
        t = np.asarray(tags)
        est = _mean_of_tag_means(v, t, weights)
        data = (v, t)
        stat = lambda x, tt: _mean_of_tag_means(x, tt, weights)  # noqa: E731
        kw = {"vectorized": False, "paired": True}
    if v.size < 2:
        return (est, math.nan, math.nan)
    if np.all(v == v[0]):
        return (est, est, est)
    res = bootstrap(data, stat, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    random_state=np.random.default_rng(seed), **kw)
    return (est, float(res.confidence_interval.low), float(res.confidence_interval.high))


# ---------------------------------------------------------------------------------------------
# Tables from run folders
# ---------------------------------------------------------------------------------------------
def _metric_of(result: PromptRecord, when: str, metric: Optional[str]) -> float:
    part = result.side(when)
    if metric is None:
        return float(part.reward)  # type: ignore[arg-type]
    for scores in (part.eval, part.scores):
        if metric in scores:
            return float(scores[metric])  # type: ignore[arg-type]
    raise KeyError(f"metric {metric!r} not found in the results (have: {sorted(part.eval) + sorted(part.scores)})")


def _anytime_curve(results: list[PromptRecord], grid) -> list[float]:
    """Mean over prompts of the best critic reward reached within each generator-token budget."""
    import numpy as np

    curves = []
    for r in results:
        pts = [(t["budget"]["generator_tokens"], t["best"]) for t in r.trace if "budget" in t and "best" in t]
        if not pts:
            continue
        toks = np.array([p[0] for p in pts], dtype=float)
        best = np.maximum.accumulate(np.array([p[1] for p in pts], dtype=float))
        idx = np.searchsorted(toks, grid, side="right") - 1
        # before its first candidate a strategy has nothing; count the first candidate's reward
        curves.append(np.where(idx >= 0, best[np.clip(idx, 0, None)], best[0]))
    return np.mean(curves, axis=0).tolist() if curves else []


def summarize_runs(runs: dict[str, Union[str, Path]], metric: Optional[str] = None, confidence: float = 0.95,
                   n_resamples: int = 2000) -> dict:
    """The comparison table (as a dict) from finished run folders ``{label: run_dir}``."""
    from milr.records import RunRecord

    loaded = {label: RunRecord(d).records() for label, d in runs.items()}
    for label, res in loaded.items():
        if not res:
            raise ValueError(f"run {label!r} ({runs[label]}) has no results")
    first = next(iter(loaded.values()))
    tags = sorted({r.tag for r in first})
    rows: dict[str, dict] = {}

    def row(results: list[PromptRecord], when: str) -> dict:
        vals = [_metric_of(r, when, metric) for r in results]
        rtags = [r.tag for r in results]
        out: dict[str, Any] = {"n": len(vals), "by_tag": {}}
        for t in tags:
            sel = [v for v, tt in zip(vals, rtags) if tt == t]
            if sel:
                out["by_tag"][t] = dict(zip(("mean", "low", "high"), bootstrap_interval(sel, None, confidence, n_resamples)))
        out["overall"] = dict(zip(("mean", "low", "high"), bootstrap_interval(vals, rtags, confidence, n_resamples)))
        if when == "final":
            for k in ("generator_tokens", "critic_calls", "seconds"):
                xs = [getattr(r.budget, k) for r in results if r.budget is not None]
                out[k] = sum(xs) / len(xs) if xs else None
        else:
            out.update(generator_tokens=None, critic_calls=1, seconds=None)
        return out

    rows["base"] = row(first, "initial")
    rows["base"]["oracle"] = "no"  # the ordinary generation: no critic has acted on it
    base_tokens = []
    for r in first:
        tr = r.trace
        if tr and "budget" in tr[0]:
            base_tokens.append(tr[0]["budget"]["generator_tokens"])
    rows["base"]["generator_tokens"] = sum(base_tokens) / len(base_tokens) if base_tokens else None
    for label, res in loaded.items():
        ids = {r.id for r in res}
        if ids != {r.id for r in first}:
            print(f"milr compare: warning: run {label!r} covers different prompts than the first run", file=sys.stderr)
        rows[label] = row(res, "final")
        verdict = RunRecord(runs[label]).oracle()  # milr.benchmarks.oracle, recorded in the manifest
        rows[label]["oracle"], rows[label]["oracle_reasons"] = verdict.label(), list(verdict.reasons)
    max_tok = max((r.budget.generator_tokens for res in loaded.values() for r in res if r.budget is not None), default=0)
    import numpy as np

    grid = np.linspace(0, max_tok, 60) if max_tok else np.zeros(1)
    curves = {label: {"tokens": grid.tolist(), "best_reward": _anytime_curve(res, grid)} for label, res in loaded.items()}
    return {"metric": metric or "reward", "confidence": confidence, "tags": tags, "rows": rows,
            "runs": {k: str(v) for k, v in runs.items()}, "curves": curves}


def _fmt(cell: Optional[dict]) -> str:
    if not cell:
        return ""
    m, lo, hi = cell["mean"], cell["low"], cell["high"]
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{m:.3f}"
    return f"{m:.3f} [{lo:.2f}, {hi:.2f}]"


def format_table(table: dict) -> str:
    """Markdown: one row per strategy, one column per category plus overall and compute."""
    tags = table["tags"]
    pct = int(round(table["confidence"] * 100))
    head = ["strategy", "oracle", *tags, "overall", "gen. tokens / prompt", "critic calls / prompt"]
    lines = [
        f"Metric: `{table['metric']}` (mean, {pct}% bootstrap interval over prompts; overall = mean of category means).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, row in table["rows"].items():
        tok = row.get("generator_tokens")
        calls = row.get("critic_calls")
        cells = [label, row.get("oracle", "unknown"), *(_fmt(row["by_tag"].get(t)) for t in tags), _fmt(row["overall"]),
                 "" if tok is None else f"{tok:.0f}", "" if calls is None else f"{calls:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strategy_colours(table: dict, cycle: list[str]) -> dict[str, str]:
    """One colour per strategy for both panels (a strategy without a curve must not shift the others)."""
    labels = list(dict.fromkeys([*table["rows"], *table["curves"]]))
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def plot_table(table: dict, path: Union[str, Path]) -> Path:
    """Score against compute: anytime best critic reward (left), final metric with interval (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colour = strategy_colours(table, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for label, c in table["curves"].items():
        if c["best_reward"]:
            a1.plot(c["tokens"], c["best_reward"], label=label, color=colour[label])
    a1.set_xlabel("generator tokens per prompt")
    a1.set_ylabel("best critic reward so far (mean over prompts)")
    a1.set_title("anytime search progress")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    for label, row in table["rows"].items():
        x = row.get("generator_tokens") or 0.0
        o = row["overall"]
        lo, hi = o["low"], o["high"]
        err = None if lo is None or math.isnan(lo) else [[o["mean"] - lo], [hi - o["mean"]]]
        a2.errorbar([x], [o["mean"]], yerr=err, fmt="o", capsize=4, label=label, color=colour[label])
    a2.set_xlabel("generator tokens per prompt (mean)")
    a2.set_ylabel(f"{table['metric']} (overall)")
    a2.set_title(f"final score, {int(round(table['confidence'] * 100))}% bootstrap interval")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(table: dict, output_dir: Union[str, Path]) -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from milr.records import strict_json

    (out / "compare.json").write_text(json.dumps(strict_json(table), indent=2, allow_nan=False))
    (out / "compare.md").write_text(format_table(table) + "\n")
    plot_table(table, out / "compare.png")
    return out


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def compare(
    recipe: Union[str, Path, dict],
    searches: Union[str, Sequence[Union[str, dict]]],
    overrides: Sequence[str] = (),
    output_dir: Union[str, Path, None] = None,
    match_budget: Union[bool, str] = "max",
    metric: Optional[str] = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path:
    """Run each search of ``searches`` on ``recipe``'s prompts at a matched generator-token budget.

    Returns the output folder (``compare.md``, ``compare.json``, ``compare.png``, ``runs/``).
    ``metric``: a critic name from the recipe's ``evaluate`` (or ``critics``) list; default: the
    first ``evaluate`` critic, else the search critic's reward.
    """
    from milr.recipe import load_recipe
    from milr.runner import run_recipe

    if match_budget not in (True, False, "max", "mean"):
        raise ValueError(f"match_budget must be 'max', 'mean', True (= 'max') or False, got {match_budget!r}")
    import yaml

    from milr.recipe import RecipeError, preflight

    try:
        specs = parse_search_specs(searches)
    except (ValueError, yaml.YAMLError) as e:
        raise RecipeError("command line", "--searches", " ".join(str(e).split())) from None
    base = load_recipe(recipe, list(overrides))
    data = base.to_dict()
    if base.source and data.get("prompts", {}).get("file"):
        f = Path(data["prompts"]["file"])
        if not f.is_absolute():
            data["prompts"]["file"] = str((Path(base.source).parent / f).resolve())
    if output_dir is None:
        output_dir = Path(base.run.output_dir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(output_dir)
    # Every strategy's recipe is checked before the first one runs (or any folder exists): a typo
    # in the last --searches entry must not surface after hours of the first.
    cap0 = data.get("run", {}).get("budget", {}).get("generator_tokens")
    for i, spec in enumerate(specs):
        d = json.loads(json.dumps(data))
        d["search"] = {"name": spec["name"], **spec["args"]}
        if cap0 is not None and _COUNT_ARGS.get(spec["name"]) and _COUNT_ARGS[spec["name"]] not in spec["args"]:
            d["search"][_COUNT_ARGS[spec["name"]]] = _UNCAPPED_COUNT
        try:
            preflight(load_recipe(d))
        except RecipeError as e:
            raise RecipeError(f"--searches {spec['label']}", e.path, e.problem) from None
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if metric is None and base.evaluate:
        metric = base.evaluate[0].name
    cap = data.get("run", {}).get("budget", {}).get("generator_tokens")

    runs: dict[str, Path] = {}
    for i, spec in enumerate(specs):
        d = json.loads(json.dumps(data))
        d["search"] = {"name": spec["name"], **spec["args"]}
        d.setdefault("run", {})
        d["run"]["output_dir"] = str(out / "runs")
        d["run"]["name"] = re.sub(r"[^\w\-.]+", "_", spec["label"]).strip("_") or f"search{i}"
        if cap is not None:
            d["run"].setdefault("budget", {})["generator_tokens"] = int(cap)
            count = _COUNT_ARGS.get(spec["name"])
            if count and count not in spec["args"]:
                d["search"][count] = _UNCAPPED_COUNT
        log(f"milr compare: [{i + 1}/{len(specs)}] {spec['label']}" + (f" (budget {int(cap)} generator tokens per prompt)" if cap else ""))
        runs[spec["label"]] = run_recipe(d, progress=progress, log=log)
        if cap is None and match_budget and i == 0 and len(specs) > 1:
            from milr.records import RunRecord

            spent = [r.need("budget").budget.generator_tokens for r in RunRecord(runs[spec["label"]]).records()]
            how = "mean" if match_budget == "mean" else "max"
            cap = int(math.ceil(sum(spent) / len(spent))) if how == "mean" else int(max(spent))
            log(f"milr compare: matching the others to {spec['label']}'s {how} spend, {cap} generator tokens per prompt")
    table = summarize_runs(runs, metric=metric, confidence=confidence, n_resamples=n_resamples)
    table["budget_generator_tokens"] = cap
    table["searches"] = specs
    write_outputs(table, out)
    log(format_table(table))
    return out
