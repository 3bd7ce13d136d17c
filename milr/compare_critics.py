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

With 48 prompts one prompt moves a category by 0.125, so one seed's table is noisy. ``--pool``
pools finished comparisons (other seeds, other prompts; one budget) into one table, each search
(seed, prompt) one unit of the bootstrap:

    milr compare --pool docs/results/critic-gains-test,docs/results/critic-gains-test-seed1 --out pooled
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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


def read_label_run(run_dir: Path, metric: Optional[str]) -> tuple[list[dict], str, Any, Any]:
    """A finished label's rows, its oracle verdict, and the seed and generator-token budget it ran at."""
    from milr.records import RunRecord

    run = json.loads((run_dir / "manifest.json").read_text()).get("recipe", {}).get("run", {})
    return (load_rows(run_dir, metric), RunRecord(run_dir).oracle().label(), run.get("seed"),
            run.get("budget", {}).get("generator_tokens"))


def write_outputs(out: Path, header: str, summary: dict, verdicts: dict[str, str], recipes: dict[str, str],
                  payload: dict, log: Callable[[str], None]) -> Path:
    """Each row's oracle verdict into ``summary``; ``critic-gains.md`` (``header`` + table) / ``.json`` into ``out``."""
    for label, v in summary.items():
        v["oracle"] = verdicts[label]
    md = header + "\n\n" + table(summary, recipes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "critic-gains.md").write_text(md)
    (out / "critic-gains.json").write_text(json.dumps(dict(payload, summary=summary), indent=2, allow_nan=False))
    log(md)
    return out


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


def pool_rows(runs: Sequence[tuple[str, int, Optional[int], dict[str, list[dict]]]]) -> dict[str, list[dict]]:
    """Rows of several comparisons as one set: ``runs`` holds ``(name, seed, budget, rows by label)``.

    A prompt searched at two seeds is two units (ids become ``"seed<k>/<id>"``); the same search
    twice would count one result double and is an error, as are different budgets. Labels missing
    from some comparison are left out (their rows would not cover the same searches).
    """
    if not runs:
        raise ValueError("--pool: give at least one comparison folder")
    budgets = {budget for _, _, budget, _ in runs}
    if len(budgets) > 1:
        raise ValueError(f"--pool: the comparisons have different generator-token budgets {sorted(budgets, key=str)}; "
                         "pool only runs at one budget")
    labels = [lab for lab in runs[0][3] if all(lab in rows for _, _, _, rows in runs)]
    if not labels:
        raise ValueError("--pool: no recipe label is in every comparison")
    pooled: dict[str, list[dict]] = {lab: [] for lab in labels}
    seen: dict[str, str] = {}
    for name, seed, _, rows in runs:
        for lab in labels:
            for r in rows[lab]:
                uid = f"seed{seed}/{r['id']}"
                if lab == labels[0]:
                    if uid in seen:
                        raise ValueError(f"--pool: {r['id']} at seed {seed} is in both {seen[uid]} and {name}; "
                                         "each search may count once")
                    seen[uid] = name
                pooled[lab].append(dict(r, id=uid))
    return pooled


def _label_run(folder: Path, label: str) -> Path:
    """A comparison's run folder for ``label``: ``runs/<label>-<time>`` (latest) or ``records/<label>``."""
    runs = sorted(p for p in (folder / "runs").glob(f"{label}-*") if (p / "manifest.json").is_file())
    if runs:
        return runs[-1]
    if (folder / "records" / label / "manifest.json").is_file():
        return folder / "records" / label
    raise ValueError(f"--pool: {folder} has no run folder for {label!r} (runs/{label}-* or records/{label})")


def pool_comparisons(folders: Sequence[str | Path], output_dir: str | Path, oracle_label: str = "oracle",
                     metric: Optional[str] = None, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Path:
    """One table over finished ``milr compare --recipes`` folders; write and return the output folder."""
    runs, recipes, verdicts, described = [], {}, {}, []
    for f in map(Path, folders):
        meta = f / "critic-gains.json"
        if not meta.is_file():
            raise ValueError(f"--pool: {f} is not a `milr compare --recipes` output folder (no critic-gains.json)")
        try:
            labels = json.loads(meta.read_text()).get("recipes")
        except (ValueError, AttributeError) as e:
            raise ValueError(f"--pool: {meta} is not a comparison's JSON ({e})") from None
        if not isinstance(labels, dict) or not labels:
            raise ValueError(f"--pool: {meta} names no recipes; is it from `milr compare --recipes`?")
        rows, seed, budget = {}, None, None
        for label, recipe in labels.items():
            if recipes.setdefault(label, recipe) != recipe:
                raise ValueError(f"--pool: label {label!r} is {recipes[label]!r} in one comparison and {recipe!r} in {f}")
            rows[label], verdict, seed, budget = read_label_run(_label_run(f, label), metric)
            verdicts.setdefault(label, verdict)
        runs.append((str(f), seed, budget, rows))
        described.append(f"`{f}` (seed {seed}, {len(next(iter(rows.values())))} prompts)")
    pooled = pool_rows(runs)
    summary = summarise(pooled, oracle_label)
    used = {lab: recipes[lab] for lab in summary}
    header = (f"MILR under each search critic, pooled over {len(runs)} comparisons ({len(next(iter(pooled.values())))} "
              f"searches per recipe, at most {runs[0][2]} generator tokens per prompt): {', '.join(described)}. Held-out "
              "metric: each recipe's first `evaluate:` critic; overall = mean of category means, 95% bootstrap intervals "
              "over searches within categories.")
    return write_outputs(Path(output_dir), header, summary, verdicts, used, {"pooled": [str(f) for f in folders], "recipes": used}, log)


def compare_critics(recipes: dict[str, str], overrides: Sequence[str], output_dir: str | Path,
                    oracle_label: str = "oracle", metric: Optional[str] = None,
                    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Path:
    """Run every labelled recipe on the same prompts and budget; write and return the output folder."""
    from milr.recipe import load_recipe

    for label, recipe in recipes.items():  # every recipe valid before anything runs
        load_recipe(recipe, list(overrides))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, verdicts, seed, budget = {}, {}, None, None
    for label, recipe in recipes.items():
        run_dir = run_label(label, recipe, list(overrides), out)
        rows[label], verdicts[label], seed, budget = read_label_run(run_dir, metric)
        log(f"milr compare: {label}: {run_dir}")
    summary = summarise(rows, oracle_label)
    first = next(iter(rows.values()))
    header = (f"MILR under each search critic on the same {len(first)} prompts (seed {seed}), at most {budget} generator "
              f"tokens per prompt; held-out metric: each recipe's first `evaluate:` critic, per category before → after; "
              f"overall = mean of category means, 95% bootstrap intervals over prompts within categories. "
              f"Overrides: `{' '.join(overrides)}`.")
    return write_outputs(out, header, summary, verdicts, recipes, {"recipes": recipes, "overrides": list(overrides)}, log)
