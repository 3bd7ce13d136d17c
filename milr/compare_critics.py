"""``milr compare --recipes``: MILR's gain under different search critics, at one generator-token budget.

The question of issue 11 of the project: does a critic that is not the evaluation scorer (the
"oracle") make the images better, judged by that scorer held out? Each labelled recipe runs its own
search critics on the same prompts and seeds (so every run's initial image is the same ordinary
generation), capped at the same generator-token budget; the metric is each recipe's first
``evaluate:`` critic (on MiniMUG, ``world_oracle`` in binary mode: GenEval's pass/fail). Reported
per category and overall (the mean of category means, GenEval's aggregation): the score before and
after with a 95% bootstrap interval (prompts resampled within categories), the gain with its
interval, prompts fixed / broken, the gain as a share of the oracle row's gain, and each row's
oracle verdict (:mod:`milr.benchmarks.oracle`).

    milr compare --recipes oracle=quickstart-oracle,quickstart=quickstart,mixed=mixed-reward \
        prompts.split=test prompts.per_tag=8 run.budget.generator_tokens=3200 --out docs/results/critic-gains-test

Outputs ``critic-gains.md`` / ``critic-gains.json`` (strict JSON) and one run folder per label under
``OUT/runs``; a killed comparison resumes: a label whose run folder exists is resumed, not rerun.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from milr.geneval import TAGS


def run_label(label: str, recipe: str, overrides: list[str], out: Path) -> Path:
    """Run (or resume) one labelled recipe; returns its run folder."""
    from milr.runner import run_recipe

    runs = out / "runs"
    existing = sorted(p for p in runs.glob(f"{label}-*") if (p / "manifest.json").is_file()) if runs.is_dir() else []
    if existing:
        return Path(run_recipe(None, resume=existing[-1]))
    return Path(run_recipe(recipe, overrides=overrides + [f"run.output_dir={runs}", f"run.name={label}"]))


def load_rows(run_dir: Path, metric: Optional[str]) -> list[dict]:
    """One row per prompt: the held-out metric before and after, and the spend (typed run records)."""
    from milr.run_record import read_records

    rows = []
    for r in read_records(run_dir, skip_torn=False):
        ev_i, ev_f = r.side("initial").eval, r.side("final").eval
        key = metric or next(iter(ev_i))
        budget = r.need("budget").budget
        rows.append({"id": r.id, "tag": r.tag, "before": float(ev_i[key]), "after": float(ev_f[key]),  # type: ignore[arg-type]
                     "tokens": budget.generator_tokens, "critic_calls": budget.critic_calls})
    return rows


def _overall(values: np.ndarray, tags: np.ndarray, order: list[str]) -> float:
    return float(np.mean([values[tags == t].mean() for t in order]))


def bootstrap_overall(values: np.ndarray, tags: np.ndarray, order: list[str], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of category means, resampling prompts within categories."""
    rng = np.random.default_rng(seed)
    idx = {t: np.flatnonzero(tags == t) for t in order}
    stats = []
    for _ in range(n):
        stats.append(np.mean([values[rng.choice(idx[t], size=len(idx[t]))].mean() for t in order]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def summarise(rows_by_label: dict[str, list[dict]], oracle_label: Optional[str]) -> dict:
    out = {}
    ids = None
    for label, rows in rows_by_label.items():
        rows = sorted(rows, key=lambda r: r["id"])
        if ids is None:
            ids = [r["id"] for r in rows]
        elif [r["id"] for r in rows] != ids:
            raise ValueError(f"{label}: its prompts differ from the first recipe's; compare on one prompt set")
        tags = np.array([r["tag"] for r in rows])
        order = [t for t in TAGS if t in set(tags)] or sorted(set(tags))
        before = np.array([r["before"] for r in rows])
        after = np.array([r["after"] for r in rows])
        gain = after - before
        out[label] = {
            "n": len(rows),
            "per_tag": {t: {"before": float(before[tags == t].mean()), "after": float(after[tags == t].mean()),
                            "gain": float(gain[tags == t].mean())} for t in order},
            "before": _overall(before, tags, order),
            "after": _overall(after, tags, order),
            "after_ci": bootstrap_overall(after, tags, order),
            "gain": _overall(gain, tags, order),
            "gain_ci": bootstrap_overall(gain, tags, order),
            "fixed": int(((before < 0.5) & (after >= 0.5)).sum()),
            "broken": int(((before >= 0.5) & (after < 0.5)).sum()),
            "tokens_per_prompt": float(np.mean([r["tokens"] for r in rows])),
            "critic_calls_per_prompt": float(np.mean([r["critic_calls"] for r in rows])),
        }
    if oracle_label in out and out[oracle_label]["gain"] > 0:
        for v in out.values():
            v["share_of_oracle_gain"] = v["gain"] / out[oracle_label]["gain"]
    return out


def table(summary: dict, recipes: dict[str, str]) -> str:
    first = next(iter(summary.values()))
    tags = list(first["per_tag"])
    head = ("| search critic (recipe) | oracle? | " + " | ".join(tags) + " | overall before → after [95% CI] | gain [95% CI] | "
            "share of oracle gain | fixed / broken | tokens / prompt |")
    lines = [head, "|" + "---|" * (len(tags) + 7)]
    for label, v in summary.items():
        cells = []
        for t in tags:
            pt = v["per_tag"][t]
            cells.append(f"{pt['before']:.3f} → {pt['after']:.3f}")
        share = f"{v['share_of_oracle_gain']:.2f}×" if "share_of_oracle_gain" in v else "–"
        lines.append(
            f"| {label} (`{recipes[label]}`) | {v.get('oracle', 'unknown')} | " + " | ".join(cells)
            + f" | {v['before']:.3f} → **{v['after']:.3f}** [{v['after_ci'][0]:.2f}, {v['after_ci'][1]:.2f}]"
            + f" | {v['gain']:+.3f} [{v['gain_ci'][0]:+.2f}, {v['gain_ci'][1]:+.2f}] | {share} | {v['fixed']} / {v['broken']}"
            + f" | {v['tokens_per_prompt']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_recipes(text: str) -> dict[str, str]:
    """``label=recipe,label=recipe`` (a bare recipe is labelled by its name)."""
    out: dict[str, str] = {}
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        label, _, recipe = item.partition("=") if "=" in item else (Path(item).stem, "", item)
        if not label or not recipe or label in out:
            raise ValueError(f"--recipes: expected label=recipe items with distinct labels, got {item!r}")
        out[label] = recipe
    if not out:
        raise ValueError("--recipes: give at least one label=recipe")
    return out


def compare_critics(recipes: dict[str, str], overrides: Sequence[str], output_dir: str | Path,
                    oracle_label: str = "oracle", metric: Optional[str] = None,
                    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Path:
    """Run every labelled recipe on the same prompts and budget; write and return the output folder."""
    from milr.recipe import load_recipe
    from milr.records import RunRecord

    for label, recipe in recipes.items():  # every recipe valid before anything runs
        load_recipe(recipe, list(overrides))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, verdicts, seed, budget = {}, {}, None, None
    for label, recipe in recipes.items():
        run_dir = run_label(label, recipe, list(overrides), out)
        rows[label] = load_rows(run_dir, metric)
        verdicts[label] = RunRecord(run_dir).oracle().label()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        seed = manifest.get("recipe", {}).get("run", {}).get("seed", seed)
        budget = manifest.get("recipe", {}).get("run", {}).get("budget", {}).get("generator_tokens", budget)
        log(f"milr compare: {label}: {run_dir}")
    summary = summarise(rows, oracle_label)
    for label, v in summary.items():
        v["oracle"] = verdicts[label]
    first = next(iter(rows.values()))
    md = (f"MILR under each search critic on the same {len(first)} prompts (seed {seed}), at most {budget} generator "
          f"tokens per prompt; held-out metric: each recipe's first `evaluate:` critic, per category before → after; "
          f"overall = mean of category means, 95% bootstrap intervals over prompts within categories. "
          f"Overrides: `{' '.join(overrides)}`.\n\n" + table(summary, recipes))
    (out / "critic-gains.md").write_text(md)
    (out / "critic-gains.json").write_text(json.dumps({"recipes": recipes, "overrides": list(overrides),
                                                       "summary": summary}, indent=2, allow_nan=False))
    log(md)
    return out
