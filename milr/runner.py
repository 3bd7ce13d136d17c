"""The runner: one loop that drives any search strategy with any critic on any model.

For each prompt: a fresh search instance, one :class:`~milr.interfaces.BudgetLedger`, the
ask/tell loop until the search is done or the budget is spent, then the initial and final images
are scored by every critic (and by held-out ``evaluate`` critics) and one result line is written.
Results are appended as each prompt finishes, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from milr.errors import NonFiniteError, RunFolderError
from milr.executors.shards import Shard
# The builders live in the factory; re-exported here for callers that import them from the runner.
from milr.factory import build_critic, build_critics, build_model, critic_labels, resolve_device  # noqa: F401
from milr.interfaces import Budget, BudgetLedger, Critic, Task
from milr.recipe import Recipe, load_recipe, preflight
from milr.records import RunRecord, format_summary
from milr.registry import CRITICS, SEARCHES
from milr.run_record import BudgetRecord, ImagesRecord, PromptRecord, SideRecord


def _card_cost(name: str) -> str | None:
    try:
        card = CRITICS.card(name)
    except Exception:  # an import-path critic has no registered card
        return None
    return getattr(card, "cost", None)


def _score(critic: Critic, images, task: Task, ledger: Optional[BudgetLedger] = None):
    import torch

    with torch.no_grad():
        r = critic.score(images, [task.prompt] * len(images), [task.metadata] * len(images))
    if ledger is not None:
        ledger.add_critic_calls(len(images))
    return r.detach().float().cpu()


def bind_run_folder(critics: list, run_dir: Path) -> None:
    """Give every critic that keeps state across resumes (api_judge's spend) the run folder.

    Walks through wrappers (the score cache's ``critic``) and ensembles' ``members``.
    """
    seen: set[int] = set()
    todo = list(critics)
    while todo:
        c = todo.pop()
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        if callable(getattr(type(c), "bind_run_folder", None)):
            c.bind_run_folder(run_dir)
        todo += [getattr(c, "critic", None), *(getattr(c, "members", None) or [])]


def _culprit(critic: Critic, images, task: Task) -> str:
    """The member of an ensemble that returned a non-finite score (the critic itself otherwise)."""
    import torch

    for name, member in zip(getattr(critic, "names", None) or [], getattr(critic, "members", None) or []):
        try:
            if not bool(torch.isfinite(_score(member, images, task)).all()):
                return f"{name}' (in the ensemble '{critic.name}"
        except Exception:  # the member fails on its own: it is the culprit either way
            return f"{name}' (in the ensemble '{critic.name}"
    return critic.name


def finite_rewards(rewards, candidates: list, critic: Critic, images, task: Task, on_nonfinite: str,
                   ledger: BudgetLedger):
    """Rewards with no NaN/inf: an error naming the critic, or (``skip``) such candidates dropped.

    A dropped candidate is flagged ``info["nonfinite"]`` (so it is never returned as best) and its
    reward set to the lowest finite reward seen so far for this prompt (0 if none), so a search's
    update treats it as the worst sample rather than receiving a NaN; ``ledger.skipped_nonfinite``
    counts them.
    """
    import torch

    bad = ~torch.isfinite(rewards)
    ok = rewards[~bad]
    if len(ok):
        ledger.min_finite_reward = min(float(ok.min()), getattr(ledger, "min_finite_reward", float("inf")))
    if not bool(bad.any()):
        return rewards
    if on_nonfinite != "skip":
        name = _culprit(critic, images[bad], task)
        raise NonFiniteError(
            f"critic '{name}' returned {float(rewards[bad][0])} for prompt {task.id!r} ({int(bad.sum())} of "
            f"{len(rewards)} candidates); fix the critic, or set run.on_nonfinite: skip to drop such candidates")
    ledger.skipped_nonfinite = getattr(ledger, "skipped_nonfinite", 0) + int(bad.sum())
    floor = getattr(ledger, "min_finite_reward", float("inf"))
    out = rewards.clone()
    out[bad] = floor if floor != float("inf") else 0.0
    for c, b in zip(candidates, bad.tolist()):
        if b:
            c.info["nonfinite"] = True
    return out


def run_task(search, model, critic: Critic, task: Task, budget: Budget, seed: int, on_step: Callable | None = None,
             guard=None, on_nonfinite: str = "error"):
    """The ask/tell loop for one prompt. Returns (initial candidate, initial reward, best, reward, ledger).

    ``guard`` (a :class:`milr.diagnostics.Guard`) judges the best-so-far after every step, may stop
    the loop, and decides the returned candidate; its calls count in the ledger.
    """
    import torch

    ledger = BudgetLedger(budget, model.counter)
    if guard is not None:
        guard.start(lambda image: float(_score(guard.critic, image[None], task, ledger)[0]))
    device = getattr(model, "device", "cpu")
    gen = torch.Generator(device=str(device)).manual_seed(seed)
    search.setup(model, task, ledger, gen)
    initial = None
    steps = 0
    while not search.done() and not ledger.exhausted():
        candidates = search.ask()
        if not candidates:
            break
        images = torch.stack([c.image for c in candidates])
        raw = _score(critic, images, task, ledger)
        rewards = finite_rewards(raw, candidates, critic, images, task, on_nonfinite, ledger)
        if initial is None:
            initial = (candidates[0], float(raw[0]))  # NaN when skipped: written as null
        search.tell(candidates, rewards)
        steps += 1
        stop = guard is not None and guard.observe(steps - 1, initial[0], initial[1], *search.best())
        if on_step is not None:
            on_step(steps, candidates, rewards)
        if stop:
            break
    if initial is None:
        raise RuntimeError(f"search {type(search).__name__} proposed no candidate for prompt {task.prompt!r}")
    best, reward = search.best() if guard is None else guard.returned()
    if best.info.get("nonfinite"):
        raise NonFiniteError(f"critic '{critic.name}' gave no finite reward to any candidate for prompt {task.id!r}")
    return initial, best, reward, ledger, steps


def run_recipe(
    recipe: Recipe | str | Path | dict,
    overrides: list[str] | tuple[str, ...] = (),
    resume: str | Path | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    shard: Shard | None = None,
) -> Path:
    """Run a recipe (or resume a run folder) and return the run folder.

    ``shard`` runs only its share of the prompts (:mod:`milr.executors.shards`); a resume keeps the manifest's.
    """
    import torch
    from tqdm.auto import tqdm

    from milr.prompts import tasks_fingerprint

    if resume is not None:
        if overrides or recipe is not None:
            raise RunFolderError(f"{resume}: --resume continues the run with its own recipe; give no recipe and no "
                                 "overrides (start a new run to change anything)")
        record = RunRecord.open(resume)  # checked and locked: a second process stops here
        manifest = record.manifest()
        recipe = load_recipe(manifest["recipe"])
        tasks = preflight(recipe)
        want = (manifest.get("prompt_source") or {}).get("sha256")
        if want is not None and want != tasks_fingerprint(tasks):
            raise RunFolderError(f"{resume}: the prompts changed since the run started "
                                 f"({manifest['prompt_source'].get('source')}); start a new run")
        shard = Shard.from_manifest(manifest)
        if record.dropped:
            log(f"milr: {len(record.dropped)} finished prompt(s) lost their images or were doubled; redoing: "
                + ", ".join(record.dropped[:5]) + (" ..." if len(record.dropped) > 5 else ""))
        device = resolve_device(recipe.run.device)
    else:
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe, overrides)
        tasks = preflight(recipe)  # every user error surfaces here, before a folder or a weight exists
        name = recipe.run.name or (Path(recipe.source).stem if recipe.source else "run")
        if shard is not None:
            name += f"-shard{shard.index}of{shard.count}"
        device = resolve_device(recipe.run.device)
        p = recipe.prompts
        source = p.file or (f"suite {p.suite} split {p.split}" if p.suite else "inline")
        record = RunRecord.create_with_manifest(
            recipe.run.output_dir, name, recipe.to_dict(), recipe.run.seed, device,
            {"prompts": len(tasks), "prompt_source": {"source": source, "sha256": tasks_fingerprint(tasks)},
             **({"shard": shard.as_manifest(len(shard.select(tasks)))} if shard is not None else {})})
    if shard is not None:  # the manifest keeps the whole run's prompts fingerprint: merge checks it
        tasks = shard.select(tasks)
    done = record.done_ids()
    todo = [t for t in tasks if t.id not in done]
    log(f"milr: run folder {record.dir} ({len(todo)} of {len(tasks)} prompts to do)")
    if not todo:
        log(record.write_summary())
        record.unlock()
        return record.dir

    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    torch.manual_seed(recipe.run.seed)
    model = build_model(recipe)
    critic, members, evals = build_critics(recipe, model, device)
    bind_run_folder([critic, *members.values(), *evals.values()], record.dir)
    guard = None
    if getattr(recipe, "guard", None) is not None:
        from milr.diagnostics import Guard

        g = recipe.guard
        guard = Guard(build_critic(g.critic, model, device, None, recipe.run.dtype), g.patience, g.tolerance, g.critic.name)
    search_cls = SEARCHES.get(recipe.search.name)
    budget = Budget(**recipe.run.budget.model_dump())
    show = sys.stderr.isatty() if progress is None else progress

    # Per-step held-out scores are for the plot; critics that cost money per call (card cost "api",
    # e.g. a GPT-4o judge) score only the initial and final images, as before.
    curve_evals = {k: c for (k, c), spec in zip(evals.items(), recipe.evaluate) if _card_cost(spec.name) != "api"}
    bar = tqdm(todo, desc="prompts", disable=not show, dynamic_ncols=True)
    for task in bar:
        t0 = time.perf_counter()
        search = search_cls(**recipe.search.args)
        step_bar = tqdm(total=getattr(search, "steps", None), desc="steps", leave=False, disable=not show)
        step_images = []
        from milr.diagnostics import StepTracer

        # Held-out per-step scores for curves.png: no ledger, so they never count against the budget.
        tracer = StepTracer(members, curve_evals, critic, lambda c, x, task=task: _score(c, x, task).tolist())

        def on_step(step, candidates, rewards):
            extra = {"guard": guard.history[-1]["guard"]} if guard is not None and guard.history else None
            t_trace = time.perf_counter()
            tracer.observe(step - 1, candidates, rewards, *search.best(), extra=extra)
            # Held-out scoring is not search time: move the ledger's clock past it (budget.seconds).
            search.ledger.exclude_seconds(time.perf_counter() - t_trace)
            step_bar.update(1)
            step_bar.set_postfix(reward=f"{float(rewards.max()):.3f}")
            if recipe.run.save_steps:
                i = int(rewards.argmax())
                step_images.append(record.save_image(candidates[i].image, f"steps/{task.index:05d}_{step:03d}.png"))

        seed = recipe.run.seed * 1_000_003 + task.seed
        initial, best, reward, ledger, steps = run_task(search, model, critic, task, budget, seed, on_step, guard,
                                                        on_nonfinite=recipe.run.on_nonfinite)
        step_bar.close()
        both = __import__("torch").stack([initial[0].image, best.image])
        scores = {k: _score(c, both, task).tolist() for k, c in members.items()}
        evals_s = {k: _score(c, both, task).tolist() for k, c in evals.items()}
        for k, v in {**scores, **evals_s}.items():  # NaN here is written as null when skipping
            if recipe.run.on_nonfinite != "skip" and not all(math.isfinite(x) for x in v):
                raise NonFiniteError(f"critic {k!r} returned {v} for prompt {task.id!r}; fix the critic, "
                                     "or set run.on_nonfinite: skip")
        result = PromptRecord(
            index=task.index, id=task.id, prompt=task.prompt, metadata=task.metadata,
            initial=SideRecord(initial[1], {k: v[0] for k, v in scores.items()}, {k: v[0] for k, v in evals_s.items()},
                               initial[0].text),
            final=SideRecord(reward, {k: v[1] for k, v in scores.items()}, {k: v[1] for k, v in evals_s.items()},
                             best.text, best.step),
            steps=steps, skipped_nonfinite=getattr(ledger, "skipped_nonfinite", 0),
            budget=BudgetRecord(**ledger.snapshot()), seconds=round(time.perf_counter() - t0, 4),
            trace=getattr(search, "trace", []), curve=tracer.curve, guard=guard.record() if guard is not None else None,
            images=ImagesRecord(record.save_image(initial[0].image, f"{task.index:05d}_initial.png"),
                                record.save_image(best.image, f"{task.index:05d}_final.png"), step_images),
        )
        record.append(result.to_json())
        bar.set_postfix(reward=f"{reward:.3f}")
        if progress is None and not show:  # nohup, SLURM, a pipe: no bar, so one line per prompt
            done_n = len(tasks) - len(todo) + todo.index(task) + 1
            log(f"milr: [{done_n}/{len(tasks)}] {task.id}: reward {initial[1]:.4g} -> {reward:.4g}, "
                f"{steps} steps, {result.seconds:.1f} s")
    table = record.write_summary()
    log(table)
    record.unlock()
    return record.dir
