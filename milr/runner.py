"""The runner: one loop that drives any search strategy with any critic on any model.

For each prompt: a fresh search instance, one :class:`~milr.interfaces.BudgetLedger`, the
ask/tell loop until the search is done or the budget is spent, then the initial and final images
are scored by every critic (and by held-out ``evaluate`` critics) and one result line is written.
Results are appended as each prompt finishes, so a killed run resumes where it stopped.

``run.batch_prompts > 1`` searches that many prompts together, their model and critic calls merged
into one batch each (:mod:`milr.batching`); a prompt's record is the one it gets alone. The parts,
for executors that hand prompts to workers (Ray actors, shards): :func:`build_components` once per
process, :func:`solve` yields each finished prompt's record and images, :func:`write_result` writes
them (the driver is the only writer of ``results.jsonl``).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

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


def each_critic(critics: list) -> Iterator[Critic]:
    """Every critic given and every one inside them: wrappers' ``critic`` (the score cache), ensembles' ``members``."""
    seen: set[int] = set()
    todo = list(critics)
    while todo:
        c = todo.pop()
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        yield c
        todo += [getattr(c, "critic", None), *(getattr(c, "members", None) or [])]


def bind_run_folder(critics: list, run_dir: Path) -> None:
    """Give every critic that keeps state across resumes (api_judge's spend) the run folder."""
    for c in each_critic(critics):
        if callable(getattr(type(c), "bind_run_folder", None)):
            c.bind_run_folder(run_dir)


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
             guard=None, on_nonfinite: str = "error", ledger: Optional[BudgetLedger] = None):
    """The ask/tell loop for one prompt. Returns (initial candidate, initial reward, best, reward, ledger).

    ``guard`` (a :class:`milr.diagnostics.Guard`) judges the best-so-far after every step, may stop
    the loop, and decides the returned candidate; its calls count in the ledger. ``ledger``: a fresh
    ledger on ``model.counter`` made by the caller (the batched runner keeps its clock), else one is made.
    """
    import torch

    ledger = ledger or BudgetLedger(budget, model.counter)
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


@dataclass
class Components:
    """What a process builds once and every prompt uses (:func:`build_components`)."""

    recipe: Recipe
    model: Any
    critic: Critic  # the combined search critic
    members: dict[str, Critic]
    evals: dict[str, Critic]
    curve_evals: dict[str, Critic]  # held-out critics scored at every step (not those that cost money per call)
    guard: Any  # milr.diagnostics.Guard or None
    search_cls: type
    budget: Budget


def build_components(recipe: Recipe, device: str, run_dir: Optional[Path] = None) -> Components:
    """Threads, seed, model, critics (bound to ``run_dir`` when given), guard, search class and budget."""
    import torch

    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    torch.manual_seed(recipe.run.seed)
    model = build_model(recipe)
    critic, members, evals = build_critics(recipe, model, device)
    if run_dir is not None:
        bind_run_folder([critic, *members.values(), *evals.values()], run_dir)
    guard = None
    if getattr(recipe, "guard", None) is not None:
        from milr.diagnostics import Guard

        g = recipe.guard
        guard = Guard(build_critic(g.critic, model, device, None, recipe.run.dtype), g.patience, g.tolerance, g.critic.name)
    # Per-step held-out scores are for the plot; critics that cost money per call (card cost "api",
    # e.g. a GPT-4o judge) score only the initial and final images, as before.
    curve_evals = {k: c for (k, c), spec in zip(evals.items(), recipe.evaluate) if _card_cost(spec.name) != "api"}
    return Components(recipe, model, critic, members, evals, curve_evals, guard, SEARCHES.get(recipe.search.name),
                      Budget(**recipe.run.budget.model_dump()))


def _solve_one(c: Components, task: Task, model, wrap: Callable[[Any], Any], bind_ledger: Callable[[Any], None],
               step_bar: Any = None) -> tuple[PromptRecord, dict]:
    """One prompt: search, score the initial and final images, build its record (without image paths).

    ``model`` and ``wrap(critic)`` are the components themselves, or a batch's proxies of them.
    """
    import copy

    import torch

    from milr.diagnostics import StepTracer

    recipe = c.recipe
    t0 = time.perf_counter()
    search = c.search_cls(**recipe.search.args)
    critic, members = wrap(c.critic), {k: wrap(m) for k, m in c.members.items()}
    evals = {k: wrap(e) for k, e in c.evals.items()}
    guard = None
    if c.guard is not None:  # a guard keeps per-prompt state: each prompt its own
        guard = copy.copy(c.guard)
        guard.critic = wrap(c.guard.critic)
    step_images: list[tuple[int, Any]] = []
    # Held-out per-step scores for curves.png: no ledger, so they never count against the budget.
    tracer = StepTracer(members, {k: evals[k] for k in c.curve_evals}, critic, lambda cr, x: _score(cr, x, task).tolist())
    ledger = BudgetLedger(c.budget, model.counter)
    bind_ledger(ledger)

    def on_step(step, candidates, rewards):
        extra = {"guard": guard.history[-1]["guard"]} if guard is not None and guard.history else None
        t_trace = time.perf_counter()
        tracer.observe(step - 1, candidates, rewards, *search.best(), extra=extra)
        # Held-out scoring is not search time: move the ledger's clock past it (budget.seconds).
        ledger.exclude_seconds(time.perf_counter() - t_trace)
        if step_bar is not None:
            step_bar.update(1)
            step_bar.set_postfix(reward=f"{float(rewards.max()):.3f}")
        if recipe.run.save_steps:
            step_images.append((step, candidates[int(rewards.argmax())].image))

    if step_bar is not None:
        step_bar.reset(total=getattr(search, "steps", None))
    seed = recipe.run.seed * 1_000_003 + task.seed
    initial, best, reward, ledger, steps = run_task(search, model, critic, task, c.budget, seed, on_step, guard,
                                                    on_nonfinite=recipe.run.on_nonfinite, ledger=ledger)
    both = torch.stack([initial[0].image, best.image])
    scores = {k: _score(m, both, task).tolist() for k, m in members.items()}
    evals_s = {k: _score(e, both, task).tolist() for k, e in evals.items()}
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
    )
    return result, {"initial": initial[0].image, "final": best.image, "steps": step_images}


def solve(components: Components, tasks: Iterable[Task], batch_prompts: Optional[int] = None,
          step_bar: Any = None, stats: Any = None) -> Iterator[tuple[PromptRecord, dict]]:
    """Search ``tasks``; yield each prompt's ``(record, images)`` as it finishes.

    ``record`` is the :class:`PromptRecord` without image paths (``images`` is None); ``images`` is
    ``{"initial": Tensor[3,H,W], "final": Tensor, "steps": [(step, Tensor), ...]}`` (steps with
    ``run.save_steps``). With ``batch_prompts`` (default ``run.batch_prompts``) above 1 the prompts
    run that many at a time (:mod:`milr.batching`) and finish in any order; each record is the one
    the prompt gets alone. ``step_bar`` (a tqdm bar, batch 1 only) shows a prompt's steps;
    ``stats`` (a :class:`milr.batching.BatchStats`) collects the merged calls.
    """
    size = components.recipe.run.batch_prompts if batch_prompts is None else int(batch_prompts)
    if size <= 1:
        for task in tasks:
            yield _solve_one(components, task, components.model, lambda x: x, lambda ledger: None, step_bar)
        return
    from milr.batching import Coordinator, ModelProxy

    def work(task: Task, slot) -> tuple[PromptRecord, dict]:
        def bind(ledger) -> None:
            slot.ledger = ledger

        return _solve_one(components, task, ModelProxy(slot, components.model), slot.critic, bind)

    for _, outcome in Coordinator(components.model, size, stats).run(tasks, work):
        yield outcome


def write_result(record: RunRecord, result: PromptRecord, images: dict) -> PromptRecord:
    """Save a prompt's images in the run folder, set the record's image paths and append its line."""
    i = result.index
    result.images = ImagesRecord(record.save_image(images["initial"], f"{i:05d}_initial.png"),
                                 record.save_image(images["final"], f"{i:05d}_final.png"),
                                 [record.save_image(x, f"steps/{i:05d}_{step:03d}.png") for step, x in images.get("steps", [])])
    record.append(result.to_json())
    return result


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
        if recipe.run.executor == "ray":  # a cluster too small for the workers fails here too
            from milr.executors.ray_executor import connect

            connect(recipe.run)
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
    show = sys.stderr.isatty() if progress is None else progress
    if recipe.run.executor == "ray":  # workers build the components and solve; this process writes
        from milr.executors.ray_executor import RunnerSeam, run_ray

        with tqdm(total=len(todo), desc="prompts", disable=not show, dynamic_ncols=True) as bar:
            run_ray(recipe, record, todo, len(tasks), RunnerSeam(build_components, solve, write_result, each_critic),
                    log, progress_lines=progress is None and not show, bar=bar)
        todo = []
    if not todo:
        log(record.write_summary())
        record.unlock()
        return record.dir

    comps = build_components(recipe, device, record.dir)
    bar = tqdm(total=len(todo), desc="prompts", disable=not show, dynamic_ncols=True)
    batched = recipe.run.batch_prompts > 1
    step_bar = None if batched else tqdm(desc="steps", leave=False, disable=not show)
    for n, (result, images) in enumerate(solve(comps, todo, step_bar=step_bar), 1):
        write_result(record, result, images)
        bar.update(1)
        bar.set_postfix(reward=f"{result.final.reward:.3f}")
        if progress is None and not show:  # nohup, SLURM, a pipe: no bar, so one line per prompt
            log(f"milr: [{len(tasks) - len(todo) + n}/{len(tasks)}] {result.id}: reward {result.initial.reward:.4g} -> "
                f"{result.final.reward:.4g}, {result.steps} steps, {result.seconds:.1f} s")
    if step_bar is not None:
        step_bar.close()
    bar.close()
    table = record.write_summary()
    log(table)
    record.unlock()
    return record.dir
