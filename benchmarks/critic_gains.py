"""MILR's gain under different search critics, at an equal generator-token budget, on one prompt set.

The question of issue 11: does a critic that is not the world's exact scorer (the "oracle") make
MILR's images better, judged by the exact scorer held out? Each labelled recipe runs the same
search on the same prompts and seeds (so every run's initial image is the same ordinary
generation), capped at the same generator-token budget; the held-out metric is the recipe's first
``evaluate:`` critic (``world_oracle``, binary: GenEval's pass/fail). Reported per category and
overall (mean of category means, GenEval's aggregation): the score before and after, the gain with
a 95% bootstrap interval (prompts resampled within categories), prompts fixed / broken, and the
gain as a share of the oracle row's gain.

    python benchmarks/critic_gains.py --split test --per-tag 8 \\
        --recipes oracle=quickstart-oracle,quickstart=quickstart,mixed=mixed-reward \\
        --out docs/results/critic-gains-test

A killed run resumes: each label's run folder under ``OUT/runs`` is resumed when it exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def run_label(label: str, recipe: str, overrides: list[str], out: Path) -> Path:
    """Run (or resume) one labelled recipe; returns its run folder."""
    from milr.runner import run_recipe

    runs = out / "runs"
    existing = sorted(p for p in runs.glob(f"{label}-*") if (p / "manifest.json").is_file()) if runs.is_dir() else []
    if existing:
        return Path(run_recipe(None, resume=existing[-1]))
    return Path(run_recipe(recipe, overrides=overrides + [f"run.output_dir={runs}", f"run.name={label}"]))


def load_rows(run_dir: Path, metric: Optional[str]) -> list[dict]:
    rows = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        ev_i, ev_f = r["initial"].get("eval", {}), r["final"].get("eval", {})
        key = metric or next(iter(ev_i))
        rows.append({"id": r["id"], "tag": r["metadata"].get("tag", "all"), "before": float(ev_i[key]),
                     "after": float(ev_f[key]), "tokens": r["budget"]["generator_tokens"],
                     "critic_calls": r["budget"].get("critic_calls", 0)})
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
            raise SystemExit(f"{label}: its prompts differ from the first recipe's; compare on one prompt set")
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
    head = ("| search critic (recipe) | " + " | ".join(tags) + " | overall before → after [95% CI] | gain [95% CI] | "
            "share of oracle gain | fixed / broken | tokens / prompt |")
    lines = [head, "|" + "---|" * (len(tags) + 6)]
    for label, v in summary.items():
        cells = []
        for t in tags:
            pt = v["per_tag"][t]
            cells.append(f"{pt['before']:.3f} → {pt['after']:.3f}")
        share = f"{v['share_of_oracle_gain']:.2f}×" if "share_of_oracle_gain" in v else "–"
        lines.append(
            f"| {label} (`{recipes[label]}`) | " + " | ".join(cells)
            + f" | {v['before']:.3f} → **{v['after']:.3f}** [{v['after_ci'][0]:.2f}, {v['after_ci'][1]:.2f}]"
            + f" | {v['gain']:+.3f} [{v['gain_ci'][0]:+.2f}, {v['gain_ci'][1]:+.2f}] | {share} | {v['fixed']} / {v['broken']}"
            + f" | {v['tokens_per_prompt']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", required=True, help="label=recipe,label=recipe,... (the first 'oracle' label is the reference)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-tag", type=int, default=8)
    ap.add_argument("--budget", type=int, default=3200, help="generator tokens per prompt, every recipe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metric", default=None, help="evaluate critic name (default: the first)")
    ap.add_argument("--oracle", default="oracle", help="label of the oracle row")
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides for every recipe")
    args = ap.parse_args(argv)
    recipes = dict(item.split("=", 1) for item in args.recipes.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"prompts.split={args.split}", f"prompts.per_tag={args.per_tag}", f"run.seed={args.seed}",
              f"run.budget.generator_tokens={args.budget}"] + list(args.overrides)
    rows = {}
    for label, recipe in recipes.items():
        run_dir = run_label(label, recipe, common, out)
        rows[label] = load_rows(run_dir, args.metric)
        print(f"{label}: {run_dir}", file=sys.stderr)
    summary = summarise(rows, args.oracle)
    md = (f"MILR (reinforce, both latents, 20 steps, stop at the search critic's pass) under each search critic; "
          f"{args.split} split, {args.per_tag} prompts per category, seed {args.seed}, at most {args.budget} generator "
          f"tokens per prompt; held-out metric: the exact scorer's GenEval verdict (`world_oracle`, binary), "
          f"per category before → after; overall = mean of category means.\n\n" + table(summary, recipes))
    (out / "critic-gains.md").write_text(md)
    (out / "critic-gains.json").write_text(json.dumps({"recipes": recipes, "args": vars(args), "summary": summary},
                                                      indent=2, allow_nan=False))
    print(md)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
