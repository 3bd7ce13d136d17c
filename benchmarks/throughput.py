"""Throughput of the batched runner (``run.batch_prompts``, milr/batching.py) on this machine.

Issue 12: at batch 1 decoding is bound by reading weights, so the runner merges many prompts'
model and critic calls. This script measures, side by side in one process, for MiniMUG (the
shipped weights) and a random-weight Janus with Janus-Pro's 576 image tokens
(``benchmarks/janus_random.py``, shape ``small-576`` by default):

* images/s: ``generate`` (one plain generation per prompt: plan, image, pixels, one critic call);
* MILR steps/s: ``reinforce`` (mode both, no early stop; the ``faithful`` preset by default, one
  candidate per step as in the paper), steps counted as the search's tells (the initial generation
  included);

at ``batch_prompts`` 1, 4, 16 and 64, each through :func:`milr.runner.solve` end to end (proxies,
coordinator, critic calls), with ``max(batch, 2)`` prompts: one full batch. The share of
the machine's matrix-multiply peak: the model FLOPs of one image / one MILR step (counted with
``torch.utils.flop_counter`` at batch 1) times the measured rate, over the FLOP/s of a large
``torch.matmul`` measured here with the same thread count. The critic is a mean-brightness stand-in
(negligible cost), so the figures are the generator's.

    python benchmarks/throughput.py                        # both models, batches 1 4 16 64
    python benchmarks/throughput.py --models minimug --batches 1 16 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from milr.interfaces import Budget, Critic, Task  # noqa: E402
from milr.registry import SEARCHES  # noqa: E402


class Brightness(Critic):
    """Mean pixel value: a critic that costs nothing next to the generator."""

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` ``n x n`` float32 matrix products on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def components(model, search: dict):
    """Runner components around an in-memory model: the stand-in critic, no held-out critics."""
    from milr.recipe import load_recipe
    from milr.runner import Components

    recipe = load_recipe({"model": {"name": "minimug"}, "critics": [{"name": "world_oracle"}], "search": search,
                          "prompts": {"suite": "minimug-world", "split": "test", "per_tag": 1}, "run": {"seed": 0}})
    critic = Brightness()
    return Components(recipe, model, critic, {"brightness": critic}, {}, {}, None, SEARCHES.get(search["name"]), Budget())


def prompts(n: int) -> list[Task]:
    """``n`` world prompts of the MiniMUG test split (real lengths and variety), cycled."""
    from milr.registry import SUITES

    base = SUITES.get("minimug-world")(split="test")
    return [Task(index=i, prompt=base[i % len(base)]["prompt"], metadata=base[i % len(base)]["metadata"], id=str(i), seed=i)
            for i in range(n)]


def rate(comps, tasks: list[Task], batch: int, unit: str) -> float:
    """Images (one per prompt) or search steps per second through the runner."""
    from milr.runner import solve

    t = time.perf_counter()
    records = [r for r, _ in solve(comps, tasks, batch)]
    seconds = time.perf_counter() - t
    count = len(records) if unit == "images" else sum(r.steps for r in records)
    return count / seconds


def flops_per_unit(comps, unit: str) -> float:
    """Model FLOPs of one image (``generate``) or one search step, counted at batch 1 with torch's
    FLOP formulas (``torch.utils.flop_counter``: matrix products, attention, convolutions)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from milr.runner import solve

    formulas = FlopCounterMode().flop_registry

    class Count(TorchDispatchMode):
        # FlopCounterMode's own module tracker breaks the gradient through the heads; count ops only.
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = formulas.get(func._overloadpacket)
            if formula is not None:
                Count.total += formula(*args, **(kwargs or {}), out_val=out)
            return out

    with Count():
        (record, _), = list(solve(comps, prompts(1), 1))
    return Count.total / (1 if unit == "images" else record.steps)


def build(name: str, shape: str):
    if name == "minimug":
        from milr.models.minimug.model import MiniMUG

        return MiniMUG(), "MiniMUG (shipped weights)", None
    from janus_random import random_janus

    model = random_janus(shape, max_text_tokens=24)
    return model, f"Janus random {shape} ({model.image_tokens} image tokens)", 24


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minimug", "janus"], choices=["minimug", "janus"])
    ap.add_argument("--janus-shape", default="small-576")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (MiniMUG's recipes use 1)")
    ap.add_argument("--milr-steps", type=int, default=1)
    ap.add_argument("--milr-preset", default="faithful", choices=["faithful", "default"])
    args = ap.parse_args(argv)

    peak = matmul_peak(args.threads)
    print(f"matmul peak on {args.threads} thread(s): {peak / 1e9:.1f} GFLOP/s (float32 2048x2048, best of 5)")
    rows = []
    for name in args.models:
        model, label, plan_tokens = build(name, args.janus_shape)
        torch.set_num_threads(args.threads)
        gen = components(model, {"name": "generate"})
        milr = components(model, {"name": "reinforce", "preset": args.milr_preset, "steps": args.milr_steps,
                                  "max_text_tokens": plan_tokens})
        f_img, f_step = flops_per_unit(gen, "images"), flops_per_unit(milr, "steps")
        for b in args.batches:
            tasks = prompts(max(b, 2))
            img = rate(gen, tasks, b, "images")
            steps = rate(milr, tasks, b, "steps")
            rows.append((label, b, img, steps, img * f_img / peak, steps * f_step / peak))
            print(f"  {label} batch {b}: {img:.2f} images/s, {steps:.2f} MILR steps/s", flush=True)
    print()
    print("| model | batch_prompts | images/s | MILR steps/s | x batch 1 (images, steps) | share of matmul peak (images, steps) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, b, img, steps, s_img, s_step in rows:
        one = next(r for r in rows if r[0] == label)
        print(f"| {label} | {b} | {img:.2f} | {steps:.2f} | {img / one[2]:.1f}x, {steps / one[3]:.1f}x "
              f"| {100 * s_img:.1f}%, {100 * s_step:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
