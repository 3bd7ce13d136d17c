"""Batched search across prompts: wall time and agreement of records at several ``run.batch_prompts``.

Issue 12's acceptance: a 60-prompt MILR-20 MiniMUG run (``quickstart-oracle``: reinforce, mode both,
20 steps, stop at the first pass; world test split, 10 prompts per GenEval tag) is at least 4x faster
in wall time at the best batch size than at batch 1 (the README gives both presets: ``faithful``, the
paper's code, one candidate per step; ``default``, four), and a prompt's record does not depend on its
batch-mates: identical tokens are expected; where merged matrix products round differently and a
sampled token flips, the share of prompts affected (target under 1%) and the score difference
(within +-0.02) are reported. Every batch size runs the same prompts and seeds through
:func:`milr.runner.solve` in this one process, one after the other.

Every run starts with an empty score cache: a critic scores each image itself at every batch size
(a cache shared across the runs would time later runs without their critic calls and hand them the
first run's scores).

Agreement, per prompt, wall-clock fields left out. Its record is *identical* when every field is
the same to the bit. A critic batched with other prompts' images may round a score differently in
the last bits (YOLO's convolutions do, ~1e-6), and a search that reads that score may then move
its latents by as little and, rarely, sample another token. So a prompt's search *diverged* when
anything it generated differs (plans, steps, token budgets, which latents moved, the initial and
final images as saved) or any score of any candidate differs by more than ``ROUNDING`` (a
candidate's image changed); the share of prompts that diverged is the figure with the 1% target,
and the largest final-reward difference over all prompts the one with the +-0.02 target.

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

from milr.critics.cache import CachedCritic, image_digest
from milr.errors import UserError
from milr.recipe import load_recipe, preflight
from milr.runner import build_components, each_critic, solve


def comparable(record, images: dict) -> tuple[dict, list[float], dict]:
    """``(generated, scores, final)`` of a prompt's record: the record with every number that is a
    score (every float) set to None and its images' digests added, those floats in order, and the
    record's ``final`` entry as written."""
    d = record.to_json()
    d.pop("seconds", None)
    for budget in [d.get("budget") or {}] + [t.get("budget") or {} for t in d.get("trace", [])]:
        budget.pop("seconds", None)
    scores: list[float] = []

    def strip(x):
        if isinstance(x, float):
            scores.append(x)
            return None
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    generated = strip(d)
    generated["image_digests"] = {k: image_digest(images[k]) for k in ("initial", "final")}
    return generated, scores, d["final"]


# Scores of the same image that differ by no more than this are one score rounded two ways
# (float32 critics differ by ~1e-6 between batch sizes here); a changed image moves one by more.
ROUNDING = 1e-4


def diverged(a: tuple, b: tuple) -> bool:
    """Whether two :func:`comparable` views of one prompt come from different searches."""
    return a[0] != b[0] or any(abs(x - y) > ROUNDING for x, y in zip(a[1], b[1]))


def clear_score_caches(comps) -> None:
    """Empty the components' score caches, so the next run scores every image itself."""
    critics = [comps.critic, *comps.members.values(), *comps.evals.values(), *comps.curve_evals.values(),
               getattr(comps.guard, "critic", None)]
    for c in each_critic(critics):
        if isinstance(c, CachedCritic):
            c.cache.clear()


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
            clear_score_caches(comps)
            t, c = time.perf_counter(), time.process_time()
            outcomes = list(solve(comps, tasks, b))
            times[b, th].append(time.perf_counter() - t)
            cpu[b, th].append(time.process_time() - c)
            run = {r.id: comparable(r, images) for r, images in outcomes}
            if runs.setdefault((b, th), run) != run:
                raise SystemExit(f"batch {b}, {th} threads: repeat {rep} wrote other records than repeat 0")
            print(f"  batch {b}, {th} thread(s) (round {rep + 1}): {times[b, th][-1]:.1f} s "
                  f"(CPU {cpu[b, th][-1]:.1f} s)", flush=True)
    seconds = {c: statistics.median(ts) for c, ts in times.items()}
    cpu_seconds = {c: statistics.median(ts) for c, ts in cpu.items()}

    ref_c = configs[0]
    ref = runs[ref_c]
    steps = sum(g["steps"] for g, _, _ in ref.values())
    print(f"\nsearch steps (initial generation included): {steps}, {steps / len(ref):.1f} per prompt\n")
    print(f"| batch_prompts | threads | wall s (median of {args.repeats}) | speed-up vs batch {ref_c[0]}, same threads | "
          f"CPU s (median) | speed-up in CPU s | prompts whose search diverged | records identical to the bit | "
          f"max score diff, other prompts | max final-reward diff | mean final reward | mean {metric} (final) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for b, th in configs:
        run = runs[b, th]
        differ = [k for k in ref if diverged(run[k], ref[k])]
        same = [k for k in ref if run[k] == ref[k]]
        rounding = [max((abs(x - y) for x, y in zip(run[k][1], ref[k][1])), default=0.0) for k in ref if k not in differ]
        final_diff = [abs(run[k][2]["reward"] - ref[k][2]["reward"]) for k in ref]
        evals = [run[k][2]["eval"].get(metric) for k in ref] if metric else []
        print(f"| {b} | {th} | {seconds[b, th]:.1f} | {seconds[ref_c[0], th] / seconds[b, th]:.2f}x | "
              f"{cpu_seconds[b, th]:.1f} | {cpu_seconds[ref_c[0], th] / cpu_seconds[b, th]:.2f}x | {len(differ)} of "
              f"{len(ref)} ({100 * len(differ) / len(ref):.1f}%) | {len(same)} of {len(ref)} | "
              f"{max(rounding, default=0.0):.1e} | {max(final_diff):.4f} | {mean([run[k][2]['reward'] for k in ref]):.4f} | "
              f"{mean([e for e in evals if e is not None]):.4f} |")
        if differ:
            notes.append(f"batch {b}, {th} thread(s): the search diverged on {', '.join(differ)}")
    for note in notes:
        print(note)
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


def critical_path(comps, tasks: list, ref: dict[str, tuple], batch1_seconds: float, threads: int, repeats: int) -> None:
    """Time the prompts that ran the most steps, alone in one batch, and print the bound it sets.

    A prompt's steps run one after another, so any batched run of these prompts contains the
    rounds in which these run all their steps, each with at least their rows: however many other
    prompts share a round, the whole run cannot take less time than these alone (up to noise).
    """
    most = max(g["steps"] for g, _, _ in ref.values())
    slow = [t for t in tasks if ref[t.id][0]["steps"] == most]
    torch.set_num_threads(threads)
    ts = []
    for _ in range(repeats):
        clear_score_caches(comps)
        t = time.perf_counter()
        list(solve(comps, slow, len(slow)))
        ts.append(time.perf_counter() - t)
    alone = statistics.median(ts)
    print(f"\ncritical path: the {len(slow)} prompt(s) that ran all {most} steps, alone in one batch, take {alone:.1f} s "
          f"(median of {repeats}); no batch size can make this run more than {batch1_seconds / alone:.2f}x faster "
          f"than batch 1 ({batch1_seconds:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
