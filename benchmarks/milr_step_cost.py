"""Cost of one MILR step on MiniMUG, relative to one plain generation plus one critic call.

MILR (arXiv 2509.22761) argues a step is cheap because gradients pass only through the heads;
the rest of a step is decoding (plan continuation, image context, image tokens) and one critic
call. This script measures, side by side in one process and interleaved so machine load hits all
variants alike:

* ``plain``: one ordinary generation (encode prompt, greedy plan, image context, image, decode)
  plus one ``world_oracle`` call;
* ``milr step``: one ``reinforce`` step (faithful preset, mode ``both``: Adam updates through the
  heads, plan prefix forced and continued, new image context, image prefix forced, rest sampled,
  decode) plus one critic call, with the prompt's KV cache reused (the default);
* ``milr step, no prompt cache``: the same with ``use_prompt_cache=False`` (the prompt prefix and
  image context recomputed at every call);
* ``image-mode step``, with and without the cache: the plan is fixed, so the whole prompt + plan
  image context is reused (in mode ``both`` the plan changes each step and only the reasoning
  prefix can be);
* ``milr default, per candidate``: a step of the default preset (4 candidates decoded as one
  batch) divided by 4.

Target: a MILR step costs at most 1.3x a plain generation plus critic call.

    python benchmarks/milr_step_cost.py                 # shipped weights if present, else random
    python benchmarks/milr_step_cost.py --random --steps 10 --prompts 3

Without trained weights a randomly initialised MiniMUG of the shipped architecture is used
(``--tiny`` for the small test configuration); its plans run to the maximum length, so the text
part of both measurements is an upper bound.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from milr.interfaces import BudgetLedger, Task


def load_model(weights: str | None, random: bool, tiny: bool, device: str):
    from milr.models.minimug.model import MiniMUG, MiniMUGConfig, _default_words

    if not random:
        try:
            return MiniMUG(weights=weights, device=device), "trained weights"
        except FileNotFoundError as e:
            if weights is not None:
                raise
            print(f"(no trained weights: {str(e).splitlines()[0][:120]}...; using a random MiniMUG)")
    if tiny:
        return MiniMUG.random(device=device), "random, tiny test config"
    cfg = MiniMUGConfig(words=_default_words(), codebook_size=2048, hidden_size=192, layers=6, heads=6,
                        gen_embed_dim=64, max_positions=192, max_plan_tokens=24)
    return MiniMUG.random(cfg, device=device), "random, shipped architecture"


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _Stepper:
    """Drives one search through the runner's loop, one ask/score/tell at a time."""

    def __init__(self, search, model, critic, item, seed):
        self.search, self.critic, self.item = search, critic, item
        self.task = Task(index=0, prompt=item["prompt"], metadata=item["metadata"], seed=seed)
        self.ledger = BudgetLedger(None, model.counter)
        search.setup(model, self.task, self.ledger, torch.Generator().manual_seed(seed))
        self.step()  # the initial generation is not a MILR step

    def step(self) -> int:
        before = self.ledger.generator_tokens
        cands = self.search.ask()
        r = self.critic.score(torch.stack([c.image for c in cands]), [self.task.prompt] * len(cands),
                              [self.task.metadata] * len(cands))
        self.ledger.add_critic_calls(len(cands))
        self.search.tell(cands, r)
        return self.ledger.generator_tokens - before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="MiniMUG weights file or folder (default: shipped)")
    ap.add_argument("--random", action="store_true", help="use a randomly initialised MiniMUG")
    ap.add_argument("--tiny", action="store_true", help="with --random: the tiny test configuration")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per prompt and variant")
    ap.add_argument("--prompts", type=int, default=3, help="prompts (one per category, cycling)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings stable on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from milr.critics.world_oracle import WorldOracle
    from milr.world.suite import world_suite
    from milr.search.generate import PlainGeneration
    from milr.search.reinforce import Reinforce

    model, what = load_model(args.weights, args.random, args.tiny, args.device)
    critic = WorldOracle()
    items = world_suite(split="test", n_per_tag=1)[: args.prompts]
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # import torch's optimiser machinery before timing

    times: dict[str, list[float]] = {k: [] for k in ("plain", "step", "step_nocache", "image", "image_nocache", "default_per_cand")}
    tokens: dict[str, list[int]] = {k: [] for k in times}
    for p, item in enumerate(items):
        seed = 1000 + p
        milr = _Stepper(Reinforce(preset="faithful", steps=10**6), model, critic, item, seed)
        nocache = _Stepper(Reinforce(preset="faithful", steps=10**6, use_prompt_cache=False), model, critic, item, seed)
        image = _Stepper(Reinforce(preset="faithful", mode="image", steps=10**6), model, critic, item, seed)
        image_nc = _Stepper(Reinforce(preset="faithful", mode="image", steps=10**6, use_prompt_cache=False), model, critic, item, seed)
        default = _Stepper(Reinforce(preset="default", steps=10**6, samples=4), model, critic, item, seed)
        for s in range(args.steps):
            def plain():
                st = _Stepper.__new__(_Stepper)
                st.search, st.critic, st.item = PlainGeneration(), critic, item
                st.task = Task(index=0, prompt=item["prompt"], metadata=item["metadata"], seed=seed + s)
                st.ledger = BudgetLedger(None, model.counter)
                st.search.setup(model, st.task, st.ledger, torch.Generator().manual_seed(seed + s))
                tokens["plain"].append(st.step())

            times["plain"].append(_timed(plain))
            times["step"].append(_timed(lambda: tokens["step"].append(milr.step())))
            times["step_nocache"].append(_timed(lambda: tokens["step_nocache"].append(nocache.step())))
            times["image"].append(_timed(lambda: tokens["image"].append(image.step())))
            times["image_nocache"].append(_timed(lambda: tokens["image_nocache"].append(image_nc.step())))
            times["default_per_cand"].append(_timed(lambda: tokens["default_per_cand"].append(default.step())) / 4)
            tokens["default_per_cand"][-1] //= 4

    med = {k: statistics.median(v) for k, v in times.items()}
    tok = {k: statistics.mean(v) for k, v in tokens.items()}
    print(f"MiniMUG ({what}), {len(items)} prompts x {args.steps} interleaved measurements, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    print(f"{'variant':<38}{'median s':>10}{'gen. tokens':>13}{'x plain+critic':>16}")
    labels = {
        "plain": "plain generation + critic call",
        "step": "MILR step + critic (prompt KV reused)",
        "step_nocache": "MILR step + critic (prompt recomputed)",
        "image": "image-mode step + critic (KV reused)",
        "image_nocache": "image-mode step + critic (recomputed)",
        "default_per_cand": "MILR default preset, per candidate",
    }
    for k, label in labels.items():
        print(f"{label:<38}{med[k]:>10.4f}{tok[k]:>13.0f}{med[k] / med['plain']:>16.2f}")
    ratio = med["step"] / med["plain"]
    print(f"\nMILR step / (plain generation + critic call) = {ratio:.2f}  (target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")
    print(f"prompt-KV reuse speed-up per step = {med['step_nocache'] / med['step']:.2f}x (mode both: the plan changes, so "
          f"only the reasoning prefix is reused); {med['image_nocache'] / med['image']:.2f}x in image mode (prompt + plan "
          "context reused)")
    print(f"batching: the default preset's 4 candidates per step cost {med['default_per_cand'] / med['step']:.2f}x a "
          "faithful step each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
