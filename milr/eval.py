"""``milr eval``: score images that already exist, with any critics, and aggregate as the benchmark does.

    milr eval TARGET --critics CRITICS --out DIR [--layout L] [--prompts FILE.jsonl] [--benchmark B]

TARGET is one of (autodetected, or named by ``--layout``):

* ``run``: a milr run folder (``results.jsonl``); ``--which final`` (default) or ``initial``;
* ``geneval``: GenEval's ``NNNNN/metadata.jsonl`` + ``NNNNN/samples/NNNN.png``;
* ``t2i-compbench``: ``samples/{prompt}_{NNNNNN}.png`` (the prompt's category from the shipped val sets);
* ``wise``: ``<prompt_id>.png`` (category and answer from the shipped legacy set);
* ``prompt-file``: images listed in ``--prompts FILE.jsonl`` (or ``TARGET/metadata.jsonl``), one
  ``{"file", "prompt", "metadata"?, "id"?}`` per line, files relative to TARGET.

CRITICS is a YAML list (``'[{name: world_oracle, mode: binary}]'``), a YAML file holding one, or a
recipe (file or shipped name), whose ``evaluate:`` critics are used (its ``critics:`` when it has
none). Critics are validated before anything loads and built by the component factory
(:func:`milr.factory.build_critic`); a MUG model is built only when a critic takes one (``self_judge``),
from the recipe's ``model:``.

Outputs in DIR: ``results.jsonl`` (one strict-JSON line per image: file, prompt id, image index,
prompt, tag, metadata, one score per critic; NaN becomes null and is dropped from means),
``summary.json`` and ``summary.md``: the benchmark's official aggregation per critic with 95%
percentile-bootstrap intervals over images (:mod:`milr.benchmarks`), and an "oracle" column: the
verdict of the run that made the images (:mod:`milr.benchmarks.oracle`; ``unknown`` for images
from elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from milr.benchmarks import BENCHMARKS, LAYOUTS, get_benchmark
from milr.benchmarks.base import PROVENANCE_FILE, Benchmark, BenchmarkError, ImageItem, read_jsonl_prompts, run_items
from milr.benchmarks.oracle import OracleVerdict

LAYOUT_NAMES = ("run", *LAYOUTS, "prompt-file")


# ---------------------------------------------------------------------------------------------
# Critics
# ---------------------------------------------------------------------------------------------
def parse_critics(text: str) -> tuple[list, Any]:
    """(critic specs, the recipe they came from or None), validated; raises RecipeError."""
    import yaml
    from pydantic import ValidationError

    from milr.recipe import CriticSpec, RecipeError, RecipeErrors, load_recipe, validate_component_args
    from milr.registry import CRITICS

    source: Optional[str] = None
    recipe = None
    data: Any = None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        if text.lstrip().startswith(("[", "{", "-")):  # meant as inline YAML, not a file or recipe name
            raise RecipeError("--critics", "", f"not valid YAML: {str(e).splitlines()[0]}") from None
        data = None
    if not isinstance(data, list):
        path = Path(text).expanduser()
        if path.is_file():
            source = str(path)
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise RecipeError(source, "", f"not valid YAML: {e}") from None
        if not isinstance(data, list):  # a recipe (file or shipped name): validated as it loads
            recipe = load_recipe(text)
            return list(recipe.evaluate or recipe.critics), recipe
    if not data:
        raise RecipeError(source or "--critics", "", "no critics given (expected a YAML list of {name: ..., ...})")
    specs, errors = [], []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "name" not in item:
            errors.append(RecipeError(source or "--critics", str(i), f"expected a mapping with a 'name', found {item!r}"))
            continue
        try:
            spec = CriticSpec.model_validate(item)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in (i, *err["loc"]))
            errors.append(RecipeError(source or "--critics", where, f"{err['msg']} (found {err.get('input')!r})"))
            continue
        errors += validate_component_args(CRITICS, spec, str(i), source or "--critics", reserved=("weight",))
        specs.append(spec)
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    return specs, recipe


def _build(specs: list, recipe: Any, device: str) -> dict:
    """{column name: critic}, built by the component factory; a MUG model only if a critic takes one."""
    import inspect

    from milr.registry import CRITICS
    from milr.factory import build_critic, build_model, critic_labels

    needs_model = [s.name for s in specs if "model" in inspect.signature(CRITICS.get(s.name).__init__).parameters]
    model = None
    if needs_model:
        if recipe is None:
            raise BenchmarkError(f"critic {needs_model[0]!r} scores with a MUG model: pass --critics RECIPE whose "
                                 "model: section names it (its evaluate: critics are used)")
        model = build_model(recipe)
    # columns named as in a run's results (``as:`` labels, trained critics' folders, ``#i``)
    return {key: build_critic(spec, model, device) for key, spec in zip(critic_labels(specs), specs)}


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def read_target(target: Path, layout: Optional[str] = None, prompts: Optional[Path] = None,
                which: str = "final") -> tuple[list[ImageItem], str, Optional[str], OracleVerdict]:
    """(images, layout name, suite or benchmark hint, verdict of the run that made them)."""
    target = Path(target)
    if not target.is_dir():
        raise BenchmarkError(f"target {target} is not a folder")
    if layout is not None and layout not in LAYOUT_NAMES:
        raise BenchmarkError(f"unknown --layout {layout!r}; allowed: {', '.join(LAYOUT_NAMES)}")
    if prompts is not None or layout == "prompt-file":
        file = Path(prompts) if prompts is not None else target / "metadata.jsonl"
        return read_jsonl_prompts(file, target), "prompt-file", None, OracleVerdict(None, ("images from a prompt file",))
    if layout == "run" or (layout is None and (target / "results.jsonl").is_file()):
        from milr.records import RunRecord

        if not (target / "manifest.json").is_file():
            raise BenchmarkError(f"{target} is not a milr run folder (no manifest.json)")
        rec = RunRecord(target)
        suite = (rec.manifest().get("recipe", {}).get("prompts") or {}).get("suite")
        return run_items(target, which), "run", suite, rec.oracle()
    verdict = OracleVerdict(None, ("images made outside milr (no milr_export.json)",))
    if (target / PROVENANCE_FILE).is_file():
        verdict = OracleVerdict.from_manifest(json.loads((target / PROVENANCE_FILE).read_text()))
    if layout is None:
        found = [b for b in LAYOUTS.values() if b.detect(target)]
        if not found:
            if (target / "metadata.jsonl").is_file():
                return read_jsonl_prompts(target / "metadata.jsonl", target), "prompt-file", None, verdict
            raise BenchmarkError(f"cannot tell the layout of {target}: not a run folder, GenEval, T2I-CompBench or WISE "
                                 "layout; give --layout or --prompts FILE.jsonl")
        bench = found[0]
    else:
        bench = LAYOUTS[layout]
    return bench.read(target), bench.layout or bench.name, bench.name, verdict


def choose_benchmark(name: Optional[str], layout: str, hint: Optional[str], items: Sequence[ImageItem]) -> Benchmark:
    """``--benchmark`` if given; else the layout's; a run's suite card's; the prompts' common ``benchmark``; else plain means."""
    if name is not None:
        return get_benchmark(name)
    if layout == "run" and hint:
        from milr.registry import SUITES

        try:
            card = SUITES.card(hint)
        except Exception:  # a suite from a plugin no longer installed: plain means
            card = None
        return BENCHMARKS.get(getattr(card, "benchmark", "") or "none", BENCHMARKS["none"])
    if hint in BENCHMARKS:
        return BENCHMARKS[hint]
    named = {it.metadata.get("benchmark") for it in items}
    if len(named) == 1 and next(iter(named)) in BENCHMARKS:
        return BENCHMARKS[next(iter(named))]
    return BENCHMARKS["none"]


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def _load(path: Path):
    from milr.image_inputs import image_batch

    if not path.is_file():
        raise BenchmarkError(f"image {path} does not exist")
    return image_batch(path)[0]  # 8-bit RGB / 255, as the runner's PNGs hold them


def score_items(critics: dict, items: Sequence[ImageItem], batch_size: int = 16) -> dict[str, list[Optional[float]]]:
    """Every critic's score of every image; images are batched by size, in order."""
    import torch

    from milr.diagnostics import finite

    scores: dict[str, list[Optional[float]]] = {k: [None] * len(items) for k in critics}
    start = 0
    while start < len(items):
        batch = [_load(items[start].path)]
        while start + len(batch) < len(items) and len(batch) < batch_size:
            img = _load(items[start + len(batch)].path)
            if img.shape != batch[0].shape:
                break
            batch.append(img)
        part = items[start:start + len(batch)]
        images = torch.stack(batch)
        for name, critic in critics.items():
            with torch.no_grad():
                r = critic.score(images, [it.prompt for it in part], [it.metadata for it in part])
            r = r.detach().float().cpu().reshape(-1)
            if r.numel() != len(part):
                raise BenchmarkError(f"critic {name!r} returned {r.numel()} scores for {len(part)} images")
            scores[name][start:start + len(part)] = [finite(x) for x in r.tolist()]
        start += len(batch)
    return scores


OFFICIAL = "official (each category's scorer)"


def category_scorer_scores(bench: Benchmark, items: Sequence[ImageItem], scores: dict) -> Optional[list]:
    """Each image's score by its own category's scorer (T2I-CompBench's official figure), or None.

    Only for a suite whose card names different scorers per category, when every category among
    the images has its scorer among the critics; images of a category without one get None.
    """
    from milr.registry import SUITES

    if not bench.suite:
        return None
    scorers = getattr(SUITES.card(bench.suite), "scorers", {}) or {}
    if not scorers or "*" in scorers:
        return None  # one scorer for all: its own row is the official figure
    column: dict[str, str] = {}
    for tag in {it.tag for it in items} & set(scorers):
        found = [c for c in scores if c.split("#")[0] in scorers[tag]]
        if not found:
            return None
        column[tag] = found[0]
    return [scores[column[it.tag]][i] if it.tag in column else None for i, it in enumerate(items)]


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _fmt(cell: Optional[dict]) -> str:
    if not cell or cell.get("mean") is None:
        return ""
    if cell.get("low") is None:
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} [{cell['low']:.2f}, {cell['high']:.2f}]"


def format_eval(summary: dict) -> str:
    """Markdown: one row per critic; the run's oracle verdict in its own column."""
    bench = summary["benchmark"]
    tags: list[str] = []
    for agg in summary["critics"].values():
        for t in agg["by_tag"]:
            if t not in tags:
                tags.append(t)
    known = list(BENCHMARKS[bench["name"]].categories) if bench["name"] in BENCHMARKS else []
    tags = [t for t in known if t in tags] + sorted(t for t in tags if t not in known)
    head = ["critic", "oracle", *tags, "overall", "n"]
    pct = int(round(summary["confidence"] * 100))
    oracle = summary["oracle"]
    lines = [
        f"Target: `{summary['target']}` (layout {summary['layout']}; {summary['n_images']} images, {summary['n_prompts']} prompts).",
        f"Aggregation: {bench['title']}: {bench['overall_rule']}. {pct}% percentile bootstrap over images.",
        f"Oracle: **{oracle['label']}**" + (f" ({'; '.join(oracle['oracle_reasons'])})" if oracle["oracle_reasons"] else "")
        + (f"; proxies: {'; '.join(oracle['oracle_proxies'])}" if oracle["oracle_proxies"] else "") + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    notes = []
    for name, agg in summary["critics"].items():
        n = agg["n_images"] - agg["n_dropped"]
        cells = [name, oracle["label"], *(_fmt(agg["by_tag"].get(t)) for t in tags), _fmt(agg.get("overall")), str(n)]
        lines.append("| " + " | ".join(cells) + " |")
        notes += [f"- {name}: {x}" for x in agg["notes"]]
        if agg["n_dropped"]:
            notes.append(f"- {name}: {agg['n_dropped']} images without a finite score (dropped)")
    return "\n".join(lines + ([""] + notes if notes else []))


def evaluate(target: str | Path, critics: str, out: str | Path, layout: Optional[str] = None,
             prompts: Optional[str | Path] = None, benchmark: Optional[str] = None, which: str = "final",
             device: str = "cpu", batch_size: int = 16, confidence: float = 0.95, n_resamples: int = 2000) -> dict:
    """Score ``target``'s images with ``critics`` and write ``results.jsonl``, ``summary.json``, ``summary.md`` to ``out``."""
    target = Path(target)
    if batch_size < 1:
        raise BenchmarkError(f"--batch-size must be >= 1, found {batch_size}")
    specs, recipe = parse_critics(critics)
    items, layout_name, hint, verdict = read_target(target, layout, Path(prompts) if prompts else None, which)
    bench = choose_benchmark(benchmark, layout_name, hint, items)
    if bench.unscorable:
        raise BenchmarkError(bench.unscorable)
    from milr.factory import resolve_device

    built = _build(specs, recipe, resolve_device(device))
    scores = score_items(built, items, batch_size)
    official = category_scorer_scores(bench, items, scores)
    if official is not None:
        scores[OFFICIAL] = official
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, it in enumerate(items):
        try:
            file = str(it.path.relative_to(target))
        except ValueError:
            file = str(it.path)
        rec = {"file": file, "id": it.prompt_id, "image_index": it.image_index, "prompt": it.prompt, "tag": it.tag,
               "metadata": it.metadata, "scores": {k: v[i] for k, v in scores.items()}}
        if it.which:
            rec["which"] = it.which
        lines.append(json.dumps(rec, allow_nan=False))
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    summary = {
        "target": str(target),
        "layout": layout_name,
        "which": which if layout_name == "run" else None,
        "benchmark": {"name": bench.name, "title": bench.title, "overall_rule": bench.overall_rule},
        "confidence": confidence,
        "n_images": len(items),
        "n_prompts": len({it.prompt_id for it in items}),
        "oracle": {"label": verdict.label(), **verdict.as_manifest()},
        "critics": {k: bench.aggregate(items, v, confidence, n_resamples) for k, v in scores.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "summary.md").write_text(format_eval(summary) + "\n")
    return summary
