"""The ``milr`` command line.

    milr run RECIPE [key.path=value ...] [--dry-run] [--resume RUN_DIR]
    milr show RECIPE [key.path=value ...]
    milr list [critics|searches|models|suites]
    milr compare RECIPE --searches reinforce,best_of_n,cma_es [key.path=value ...]
    milr train minimug CONFIG [--out DIR]
    milr train-critic RECIPE [key.path=value ...] [--resume]
    milr train-detector RECIPE [key.path=value ...]
    milr agree RUN_DIR|RECIPE [key.path=value ...] --out DIR [--critics YAML] [--reference CRITIC]
    milr calibrate RECIPE [key.path=value ...] --out STATS.json

RECIPE is a YAML path or the name of a shipped recipe (``quickstart``). Heavy imports happen
inside the commands so ``milr list`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


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
        print()
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from milr.recipe import dump_recipe, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"# resolved from {recipe.source}")
    print(dump_recipe(recipe), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from milr.recipe import dump_recipe, load_recipe

    if args.resume:
        from milr.runner import run_recipe

        run_dir = run_recipe(None, resume=args.resume)
        print(run_dir)
        return 0
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        from milr.prompts import load_tasks

        tasks = load_tasks(recipe.prompts, recipe.source)
        print(dump_recipe(recipe), end="")
        print(f"# dry run: recipe valid; {len(tasks)} prompts; nothing loaded")
        for t in tasks[:5]:
            print(f"#   {t.id}: {t.prompt}")
        return 0
    from milr.runner import run_recipe

    run_dir = run_recipe(recipe)
    print(run_dir)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from milr.compare import compare

    out = compare(args.recipe, searches=args.searches.split(","), overrides=args.overrides, output_dir=args.out)
    print(out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.what != "minimug":
        print(f"milr train: unknown target {args.what!r}; allowed: minimug", file=sys.stderr)
        return 2
    from milr.models.minimug.train import train_minimug

    out = train_minimug(args.config, args.out)
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
    from milr.critics.normalize import calibrate

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
    p = argparse.ArgumentParser(prog="milr", description="Test-time latent reasoning for image generation (MILR).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe")
    r.add_argument("recipe", nargs="?", help="recipe file or shipped recipe name")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. search.steps=10")
    r.add_argument("--dry-run", action="store_true", help="validate and list prompts; load nothing")
    r.add_argument("--resume", metavar="RUN_DIR", help="resume a killed run from its folder")
    r.set_defaults(fn=_cmd_run)

    s = sub.add_parser("show", help="print the resolved recipe")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=_cmd_show)

    ls = sub.add_parser("list", help="list registered components with their cards")
    ls.add_argument("kind", nargs="?", choices=["critics", "searches", "models", "suites"])
    ls.add_argument("-v", "--verbose", action="store_true", help="print every card field")
    ls.set_defaults(fn=_cmd_list)

    c = sub.add_parser("compare", help="compare search strategies at a matched budget")
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--searches", required=True, help="comma-separated search names")
    c.add_argument("--out", default=None, help="output folder (default: under run.output_dir)")
    c.set_defaults(fn=_cmd_compare)

    t = sub.add_parser("train", help="train MiniMUG")
    t.add_argument("what", help="minimug")
    t.add_argument("config", help="training recipe, e.g. recipes/train-minimug.yaml")
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
    # Overrides may come after options (`milr run R --dry-run a.b=1`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if "=" not in x or x.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.command == "run" and not args.recipe and not args.resume:
        print("milr run: give a RECIPE or --resume RUN_DIR", file=sys.stderr)
        return 2
    from milr.recipe import RecipeError
    from milr.registry import UnknownComponentError

    try:
        return int(args.fn(args) or 0)
    except RecipeError as e:
        print(f"milr: recipe error:\n{e}", file=sys.stderr)
        return 2
    except UnknownComponentError as e:
        print(f"milr: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("milr: interrupted; resume with `milr run --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
