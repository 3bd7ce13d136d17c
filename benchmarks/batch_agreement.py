"""Batched search across prompts: wall time and agreement of records at several ``run.batch_prompts``.

Issue 12's acceptance: a 60-prompt MILR-20 MiniMUG run (``quickstart-oracle``: reinforce, mode both,
20 steps, stop at the first pass; world test split, 10 prompts per GenEval tag) is at least 4x faster
in wall time at the best batch size than at batch 1 (the README gives both presets: ``faithful``, the
paper's code, one candidate per step; ``default``, four), and a prompt's record does not depend on its
batch-mates: identical tokens are expected; where merged matrix products round differently and a
sampled token flips, the share of prompts affected (target under 1%) and the score difference
(within +-0.02) are reported. Every batch size runs the same prompts and seeds through
:func:`milr.runner.solve` in this one process, one after the other.

Agreement: a prompt agrees when its whole record is identical (plans, image tokens via the rewards
and scores of every step, budgets) except wall-clock fields; the score difference is that of the
held-out binary oracle (GenEval's pass/fail) over all prompts, and of the final search reward.

    python benchmarks/batch_agreement.py                                  # 60 prompts, MILR-20, batch 1 8 32
    python benchmarks/batch_agreement.py --per-tag 2 --steps 3 --batches 1 4   # a quick look
    python benchmarks/batch_agreement.py --batches 1 64 --repeats 3       # median wall time of 3 interleaved rounds
    python benchmarks/batch_agreement.py --batches 1 64 --threads 1 2     # every batch size at 1 and at 2 torch threads
    python benchmarks/batch_agreement.py --batches 1 64 --critical-path   # and the bound the slowest prompts set
    python benchmarks/batch_agreement.py --recipe quickstart --batches 1 64 --repeats 3   # the main recipe
    python benchmarks/batch_agreement.py --recipe quickstart search.preset=faithful --batches 1 64 --repeats 3

Positional arguments are the recipe's dotted overrides, as for ``milr run`` (above: the paper's MILR-20
as released, one candidate per step, instead of the default preset's four).

With several ``--threads`` each batch size runs at each thread count (interleaved); the speed-up is
then also given best against best: batch 1 at its fastest thread count (tiny matrices run best on
one) against the best batched configuration.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from milr.errors import UserError
from milr.recipe import load_recipe, preflight
from milr.runner import build_components, solve


def comparable(record) -> dict:
    """The record without wall-clock fields."""
    d = record.to_json()
    d.pop("seconds", None)
    for budget in [d.get("budget") or {}] + [t.get("budget") or {} for t in d.get("trace", [])]:
        budget.pop("seconds", None)
    return d


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a count of rounds or threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="quickstart-oracle")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. search.preset=faithful")
    ap.add_argument("--per-tag", type=positive_int, default=10)
    ap.add_argument("--steps", type=positive_int, default=20)
    ap.add_argument("--batches", nargs="+", type=positive_int, default=[1, 8, 32])
    ap.add_argument("--repeats", type=positive_int, default=1,
                    help="interleaved rounds over the batch sizes; wall time is the median (a shared machine is noisy)")
    ap.add_argument("--critical-path", action="store_true",
                    help="also time the prompts that ran every step, alone in one batch: no batch size beats that")
    ap.add_argument("--threads", type=positive_int, nargs="+", default=None,
                    help="torch threads, one or more counts (default: the recipe's run.threads)")
    args = ap.parse_args(argv)

    overrides = [f"prompts.per_tag={args.per_tag}", f"search.steps={args.steps}", *args.overrides]
    try:  # a bad recipe is the user's to fix: one line, exit 2, as the CLI does
        recipe = load_recipe(args.recipe, overrides)
        tasks = preflight(recipe)
    except UserError as e:
        print(f"batch_agreement: {e.kind} error: {' '.join(e.lines())}", file=sys.stderr)
        return 2
    comps = build_components(recipe, "cpu")
    metric = next(iter(comps.evals), None)
    thread_counts = args.threads or [recipe.run.threads or torch.get_num_threads()]
    print(f"{' '.join([args.recipe, *args.overrides])}: {len(tasks)} prompts, search {recipe.search.name} {recipe.search.args}, "
          f"threads {' and '.join(map(str, thread_counts))}", flush=True)

    configs = [(b, th) for b in args.batches for th in thread_counts]
    runs: dict[tuple[int, int], dict[str, dict]] = {}
    times: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    # CPU seconds of the process beside wall seconds: on a shared machine the time other jobs take
    # from the core shows in wall time only, so the two together tell that apart from the machine
    # itself running slower.
    cpu: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    for rep in range(args.repeats):
        for b, th in configs:
            torch.set_num_threads(th)
            t, c = time.perf_counter(), time.process_time()
            run = {r.id: comparable(r) for r, _ in solve(comps, tasks, b)}
            times[b, th].append(time.perf_counter() - t)
            cpu[b, th].append(time.process_time() - c)
            if runs.setdefault((b, th), run) != run:
                raise SystemExit(f"batch {b}, {th} threads: repeat {rep} wrote other records than repeat 0")
            print(f"  batch {b}, {th} thread(s) (round {rep + 1}): {times[b, th][-1]:.1f} s "
                  f"(CPU {cpu[b, th][-1]:.1f} s)", flush=True)
    seconds = {c: statistics.median(ts) for c, ts in times.items()}
    cpu_seconds = {c: statistics.median(ts) for c, ts in cpu.items()}

    ref_c = configs[0]
    ref = runs[ref_c]
    steps = sum(r["steps"] for r in ref.values())
    print(f"\nsearch steps (initial generation included): {steps}, {steps / len(ref):.1f} per prompt\n")
    print(f"| batch_prompts | threads | wall s (median of {args.repeats}) | speed-up vs batch {ref_c[0]}, same threads | "
          f"CPU s (median) | speed-up in CPU s | "
          f"prompts differing | mean final reward | mean {metric} (final) | max |score diff| of a prompt |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b, th in configs:
        run = runs[b, th]
        differ = [k for k in ref if run[k] != ref[k]]
        rewards = [run[k]["final"]["reward"] for k in ref]
        evals = [run[k]["final"]["eval"].get(metric) for k in ref] if metric else []
        diffs = [abs(run[k]["final"]["reward"] - ref[k]["final"]["reward"]) for k in differ] or [0.0]
        print(f"| {b} | {th} | {seconds[b, th]:.1f} | {seconds[ref_c[0], th] / seconds[b, th]:.2f}x | "
              f"{cpu_seconds[b, th]:.1f} | {cpu_seconds[ref_c[0], th] / cpu_seconds[b, th]:.2f}x | {len(differ)} of "
              f"{len(ref)} ({100 * len(differ) / len(ref):.1f}%) | {mean(rewards):.4f} | "
              f"{mean([e for e in evals if e is not None]):.4f} | {max(diffs):.4f} |")
    for th in thread_counts:
        best = min(args.batches, key=lambda b: seconds[b, th])
        print(f"\n{th} thread(s): best batch size {best}, {seconds[ref_c[0], th] / seconds[best, th]:.2f}x faster than "
              f"batch {ref_c[0]}")
    if len(thread_counts) > 1:
        base = min(((ref_c[0], th) for th in thread_counts), key=seconds.get)
        best = min(configs, key=seconds.get)
        print(f"best against best: batch {best[0]} at {best[1]} thread(s) is {seconds[base] / seconds[best]:.2f}x faster "
              f"than batch {base[0]} at its fastest, {base[1]} thread(s)")
    if args.critical_path:
        critical_path(comps, tasks, ref, seconds[ref_c], thread_counts[0], args.repeats)
    return 0


def critical_path(comps, tasks: list, ref: dict[str, dict], batch1_seconds: float, threads: int, repeats: int) -> None:
    """Time the prompts that ran the most steps, alone in one batch, and print the bound it sets.

    A prompt's steps run one after another, so any batched run of these prompts contains the
    rounds in which these run all their steps, each with at least their rows: however many other
    prompts share a round, the whole run cannot take less time than these alone (up to noise).
    """
    most = max(r["steps"] for r in ref.values())
    slow = [t for t in tasks if ref[t.id]["steps"] == most]
    torch.set_num_threads(threads)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        list(solve(comps, slow, len(slow)))
        ts.append(time.perf_counter() - t)
    alone = statistics.median(ts)
    print(f"\ncritical path: the {len(slow)} prompt(s) that ran all {most} steps, alone in one batch, take {alone:.1f} s "
          f"(median of {repeats}); no batch size can make this run more than {batch1_seconds / alone:.2f}x faster "
          f"than batch 1 ({batch1_seconds:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
