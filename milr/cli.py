"""The ``milr`` command line.

    milr run RECIPE [key.path=value ...] [--dry-run] [--resume RUN_DIR] [--shard K/N]
    milr merge RUN_DIR... --out DIR
    milr show RECIPE [key.path=value ...]
    milr list [critics|searches|models|suites]
    milr compare RECIPE --searches reinforce,best_of_n,cma_es [key.path=value ...]
    milr compare --recipes oracle=quickstart-oracle,quickstart=quickstart [key.path=value ...] --out DIR
    milr compare --pool DIR,DIR,... --out DIR
    milr train minimug CONFIG [key.path=value ...] [--out DIR]
    milr train-critic RECIPE [key.path=value ...] [--resume]
    milr train-detector RECIPE [key.path=value ...]
    milr agree RUN_DIR|RECIPE [key.path=value ...] --out DIR [--critics YAML] [--reference CRITIC]
    milr calibrate RECIPE [key.path=value ...] --out STATS.json
    milr export RUN --format geneval|t2i-compbench|wise --out DIR [--which final|initial]
    milr eval TARGET --critics CRITICS --out DIR [--layout L] [--prompts FILE.jsonl] [--benchmark B]

RECIPE is a YAML path or the name of a shipped recipe (``quickstart``). Heavy imports happen
inside the commands so ``milr list`` answers without loading torch.

Errors: a problem the user can fix (:class:`milr.errors.UserError`: recipe, prompts, weights, run
folder) prints one ``milr: <kind> error: ...`` line per problem and exits 2, before any weights
load and before a run folder exists; anything else is a bug and exits 1 with a one-line summary
(``--debug`` prints the traceback). ``show`` and ``--dry-run`` import no module a recipe names by
import path unless ``--allow-imports`` is given: recipes are code.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Sequence


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ``milr: usage error:`` line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        print(f"milr: usage error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _cmd_list(args: argparse.Namespace) -> int:
    from milr.registry import REGISTRIES, _ensure_builtin_index

    _ensure_builtin_index()
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        reg = REGISTRIES[kind]
        print(f"{kind}:")
        for name in reg.names():
            try:
                card = reg.card(name)
            except Exception as e:  # a plugin that fails to import still gets listed
                print(f"  {name:<16} (cannot load: {e})")
                continue
            if card is None:
                print(f"  {name}")
                continue
            print(f"  {name:<16} {card.summary}")
            if args.verbose:
                for k, v in card.as_dict().items():
                    if k != "summary" and v not in (None, "", (), [], {}):
                        print(f"  {'':<16}   {k}: {v}")
            else:
                print(f"  {'':<16}   {card.one_line()}")
            tags = reg.tags(name)
            if tags:  # timm-style presets: name.tag = these argument defaults
                print(f"  {'':<16}   tags: " + "; ".join(
                    f"{name}.{t} ({', '.join(f'{k}={v}' for k, v in a.items())})" for t, a in tags.items()))
        print()
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from milr.recipe import dump_recipe, load_recipe, preflight

    recipe = load_recipe(args.recipe, args.overrides)
    preflight(recipe)
    print(f"# resolved from {recipe.source}")
    print(dump_recipe(recipe), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from milr.errors import UserError
    from milr.executors.shards import parse_shard
    from milr.recipe import dump_recipe, load_recipe

    shard = parse_shard(args.shard) if args.shard is not None else None
    if args.resume:
        if shard is not None:
            raise UserError("--resume continues the shard recorded in the run folder; give no --shard")
        from milr.runner import run_recipe

        run_dir = run_recipe(args.recipe, args.overrides, resume=args.resume)
        print(run_dir)
        return 0
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        from milr.recipe import preflight

        tasks = preflight(recipe)
        print(dump_recipe(recipe), end="")
        if shard is not None:
            tasks = shard.select(tasks)
        print(f"# dry run: recipe valid; {len(tasks)} prompts{f' (shard {shard.label()})' if shard else ''}; nothing loaded")
        from milr.benchmarks.oracle import recipe_verdict

        verdict = recipe_verdict(recipe.to_dict(), tasks)
        print(f"# oracle: {verdict.label()}" + (f" ({'; '.join(verdict.reasons + verdict.proxies)})" if verdict.reasons or verdict.proxies else ""))
        for t in tasks[:5]:
            print(f"#   {t.id}: {t.prompt}")
        return 0
    from milr.runner import run_recipe

    run_dir = run_recipe(recipe, shard=shard)
    print(run_dir)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from milr.executors.shards import merge_runs

    print(merge_runs(args.runs, args.out, log=lambda s: print(s, file=sys.stderr)))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from milr.export import export_run

    prov = export_run(args.run, args.format, args.out, which=args.which, image_index=args.image_index, force=args.force)
    print(f"milr export: {prov['images']} images of {prov['prompts']} prompts in {args.format} layout "
          f"(oracle: {prov['oracle']})", file=sys.stderr)
    print(args.out)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from milr.eval import evaluate, format_eval

    summary = evaluate(args.target, args.critics, args.out, layout=args.layout, prompts=args.prompts,
                       benchmark=args.benchmark, which=args.which, device=args.device, batch_size=args.batch_size)
    print(format_eval(summary), file=sys.stderr)
    print(args.out)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from milr.errors import UserError

    overrides = list(args.overrides)
    if args.pool:
        if args.recipes or args.searches or args.recipe or overrides:
            raise UserError("milr compare --pool: give only the comparison folders and --out (they ran already)")
        if not args.out:
            raise UserError("milr compare --pool: give --out DIR")
        from milr.compare_critics import pool_comparisons

        try:
            print(pool_comparisons([x.strip() for x in args.pool.split(",") if x.strip()], args.out))
        except ValueError as e:
            raise UserError(f"milr compare: {e}") from None
        return 0
    if args.recipes:
        # `milr compare --recipes a=x,b=y key=value ...`: the first bare override lands in `recipe`.
        if args.searches or (args.recipe and "=" not in args.recipe):
            raise UserError("milr compare: give RECIPE --searches ... (strategies) or --recipes label=recipe,... (critics), not both")
        if args.recipe:
            overrides.insert(0, args.recipe)
        if not args.out:
            raise UserError("milr compare --recipes: give --out DIR")
        from milr.compare_critics import compare_critics, parse_recipes

        try:
            recipes = parse_recipes(args.recipes)
        except ValueError as e:
            raise UserError(f"milr compare: {e}") from None
        print(compare_critics(recipes, overrides, args.out))
        return 0
    if not args.recipe or not args.searches:
        raise UserError("milr compare: give RECIPE --searches reinforce,best_of_n,... or --recipes label=recipe,...")
    from milr.compare import compare

    out = compare(args.recipe, searches=args.searches.split(","), overrides=overrides, output_dir=args.out)
    print(out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.what != "minimug":
        print(f"milr train: unknown target {args.what!r}; allowed: minimug", file=sys.stderr)
        return 2
    from milr.models.minimug.train_config import load_config

    load_config(args.config, args.overrides)  # the config's own checks, before torch loads or anything trains
    from milr.models.minimug.train import train_minimug

    out = train_minimug(args.config, args.out, overrides=args.overrides)
    print(out)
    return 0


def _cmd_train_critic(args: argparse.Namespace) -> int:
    from milr.training.critic import train_critic

    out = train_critic(args.recipe, args.overrides, resume=args.resume)
    print(out)
    return 0


def _cmd_train_detector(args: argparse.Namespace) -> int:
    from milr.training.detector import load_detector_config, train_detector

    cfg = load_detector_config(args.recipe, args.overrides)
    out = train_detector(cfg, log=lambda s: print(s, file=sys.stderr))
    print(out)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from milr.calibrate import calibrate

    out, stats = calibrate(args.recipe, args.out, args.overrides, log=lambda s: print(s, file=sys.stderr))
    for name, st in sorted(stats.items()):
        print(f"{name}: n={st.n} mean={st.mean:.6g} std={st.std:.6g}", file=sys.stderr)
    print(out)
    return 0


def _cmd_agree(args: argparse.Namespace) -> int:
    from milr.agreement import AgreementError, agree, format_report

    try:
        out = agree(args.source, args.out, critics=args.critics, reference=args.reference,
                    reference_threshold=args.reference_threshold, thresholds=args.threshold or (), n=args.n,
                    overrides=args.overrides, log=lambda s: print(s, file=sys.stderr))
    except AgreementError as e:
        print(f"milr: agree error: {e}", file=sys.stderr)
        return 2
    import json

    print(format_report(json.loads((out / "agreement.json").read_text())))
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="milr", description="Test-time latent reasoning for image generation (MILR).")
    p.add_argument("--debug", action="store_true", help="print the traceback of an internal error (any position)")
    p.add_argument("--allow-imports", action="store_true",
                   help="let show/--dry-run import modules a recipe names by import path (recipes are code: trust it first)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe")
    r.add_argument("recipe", nargs="?", help="recipe file or shipped recipe name")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. search.steps=10")
    r.add_argument("--dry-run", action="store_true", help="validate and list prompts; load nothing")
    r.add_argument("--resume", metavar="RUN_DIR", help="resume a killed run from its folder")
    r.add_argument("--shard", metavar="K/N", help="run only shard K of N (0-based: prompts with index %% N == K); "
                   "join the shards with `milr merge`")
    r.set_defaults(fn=_cmd_run)

    mg = sub.add_parser("merge", help="join the run folders of `milr run --shard K/N` into one run folder")
    mg.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the shards' run folders, every shard once")
    mg.add_argument("--out", required=True, help="the merged run folder to create (new or empty)")
    mg.set_defaults(fn=_cmd_merge)

    s = sub.add_parser("show", help="print the resolved recipe")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=_cmd_show)

    ls = sub.add_parser("list", help="list registered components with their cards")
    ls.add_argument("kind", nargs="?", choices=["critics", "searches", "models", "suites"])
    ls.add_argument("-v", "--verbose", action="store_true", help="print every card field")
    ls.set_defaults(fn=_cmd_list)

    c = sub.add_parser("compare", help="compare search strategies, or search critics (--recipes), at a matched budget")
    c.add_argument("recipe", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--searches", help="comma-separated search specs, run on RECIPE")
    c.add_argument("--recipes", help="label=recipe,... : one search critic per recipe, same prompts and budget")
    c.add_argument("--pool", help="DIR,DIR,... : one table over finished --recipes comparisons (other seeds or prompts)")
    c.add_argument("--out", default=None, help="output folder (default: under run.output_dir)")
    c.set_defaults(fn=_cmd_compare)

    t = sub.add_parser("train", help="train MiniMUG")
    t.add_argument("what", help="minimug")
    t.add_argument("config", help="training recipe, e.g. recipes/train-minimug.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=3")
    t.add_argument("--out", default="checkpoints/minimug", help="checkpoints, logs and exported weights (resumes if present)")
    t.set_defaults(fn=_cmd_train)

    tc = sub.add_parser("train-critic", help="train a custom critic with Lightning")
    tc.add_argument("recipe")
    tc.add_argument("overrides", nargs="*")
    tc.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.ckpt (raise train.epochs to train longer)")
    tc.set_defaults(fn=_cmd_train_critic)

    td = sub.add_parser("train-detector", help="train a YOLO world detector with ultralytics")
    td.add_argument("recipe", help="training recipe, e.g. train-world-detector")
    td.add_argument("overrides", nargs="*")
    td.set_defaults(fn=_cmd_train_detector)

    cal = sub.add_parser("calibrate", help="generate each prompt's image once and write per-critic score statistics "
                         "(the reference of zscore/rank normalisation)")
    cal.add_argument("recipe")
    cal.add_argument("overrides", nargs="*")
    cal.add_argument("--out", required=True, help="stats file to write (.json, or .yaml)")
    cal.set_defaults(fn=_cmd_calibrate)

    ex = sub.add_parser("export", help="write a run's images in a benchmark's official layout")
    ex.add_argument("run", help="run folder")
    ex.add_argument("--format", required=True, choices=["geneval", "t2i-compbench", "wise"])
    ex.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    ex.add_argument("--which", default="final", choices=["final", "initial"], help="the run's final (default) or initial images")
    ex.add_argument("--image-index", type=int, default=None, help="WISE: which image of each prompt, when a run has several")
    ex.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    ex.set_defaults(fn=_cmd_export)

    ev = sub.add_parser("eval", help="score existing images (a run, a benchmark layout, or images + prompt file) with critics")
    ev.add_argument("target", help="run folder, GenEval / T2I-CompBench / WISE layout folder, or image folder")
    ev.add_argument("--critics", required=True, help="YAML list of critics, a YAML file with one, or a recipe (its evaluate: critics)")
    ev.add_argument("--out", required=True, help="output folder: results.jsonl, summary.json, summary.md")
    ev.add_argument("--layout", default=None, help="run, geneval, t2i-compbench, wise or prompt-file (default: detected)")
    ev.add_argument("--prompts", default=None, help="JSONL of {file, prompt, metadata?} lines for a plain image folder")
    ev.add_argument("--benchmark", default=None, help="aggregation: geneval, t2i-compbench, wise, dpg-bench or none (default: from the target)")
    ev.add_argument("--which", default="final", choices=["final", "initial"], help="for a run folder: its final or initial images")
    ev.add_argument("--device", default="cpu", help="device for the critics (cpu, cuda, auto)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.set_defaults(fn=_cmd_eval)

    ag = sub.add_parser("agree", help="score one set of images with several critics; agreement with a reference critic")
    ag.add_argument("source", help="a run folder (its initial and final images) or a recipe whose model generates images")
    ag.add_argument("overrides", nargs="*", help="dotted overrides of the recipe (not for a run folder)")
    ag.add_argument("--out", required=True, help="output folder for agreement.md, agreement.json, agreement.png")
    ag.add_argument("--critics", default=None, help="extra critics as a YAML list, e.g. '[{name: world_clip}, world_pref]'")
    ag.add_argument("--reference", default=None,
                    help="reference critic, a name or YAML spec (default: world_oracle for minimug-world prompts)")
    ag.add_argument("--reference-threshold", type=float, default=0.5, help="the reference passes at score >= this")
    ag.add_argument("--threshold", action="append", metavar="CRITIC=VALUE",
                    help="a fixed pass threshold for a critic (default: fitted to maximise agreement)")
    ag.add_argument("--n", type=int, default=1, help="images per prompt when generating from a recipe")
    ag.set_defaults(fn=_cmd_agree)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # The global flags may stand anywhere on the line, also after the command.
    flags = {"--debug": False, "--allow-imports": False}
    for f in flags:
        flags[f] = f in argv
        argv = [a for a in argv if a != f]
    # Overrides may come after options (`milr run R --dry-run a.b=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    args.debug, args.allow_imports = flags["--debug"], flags["--allow-imports"]
    stray = [x for x in extra if "=" not in x or x.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.command == "run" and not args.recipe and not args.resume:
        print("milr: usage error: give a RECIPE or --resume RUN_DIR", file=sys.stderr)
        return 2
    from milr.errors import UserError
    from milr.registry import UnknownComponentError, allow_import_paths

    inspect_only = args.command == "show" or (args.command == "run" and getattr(args, "dry_run", False))
    previous = allow_import_paths(args.allow_imports or not inspect_only)
    try:
        return int(args.fn(args) or 0)
    except UserError as e:
        for line in e.lines():
            print(f"milr: {e.kind} error: {line}", file=sys.stderr)
        return 2
    except UnknownComponentError as e:
        print(f"milr: component error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("milr: interrupted; resume with `milr run --resume RUN_DIR`", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`milr list | head`): not an error; silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug in milr or a plugin: one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        hint = "" if args.debug else " (rerun with --debug for the traceback)"
        print(f"milr: internal error: {type(e).__name__}: {first}{hint}", file=sys.stderr)
        return 1
    finally:
        allow_import_paths(previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
