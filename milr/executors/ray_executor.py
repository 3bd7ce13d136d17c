"""``run.executor: ray``: one Ray actor per device, prompts handed out as workers free up.

MILR's cost per prompt varies from one generation (passes at once) to twenty-one (all steps), so
static shards leave devices idle; here the prompts wait in one queue (a :class:`Feed` actor) and
each worker pulls the next ones whenever its ``run.batch_prompts`` batch slots run dry. A pull takes
a chunk that shrinks as the queue empties (guided self-scheduling, Polychronopoulos & Kuck 1987):
few round trips while much is left, one prompt at a time at the end so no worker waits on another's
backlog.

- **One actor per device** (``run.workers`` actors with ``run.gpus_per_worker`` GPUs and
  ``run.cpus_per_worker`` CPUs each): it loads the model and critics once, then solves the prompts
  it pulls with the runner's own code (:func:`milr.runner.solve`, batched or not), so a record
  does not depend on the executor or on which worker ran it.
- **The driver is the only writer** of the run folder: each worker streams back every finished
  prompt's record with its images (``uint8`` tensors, exactly what the PNG stores) and the driver
  writes them with :func:`milr.runner.write_result` under the folder's lock. A killed driver leaves
  the folder as a killed local run does, and ``milr run --resume RUN_DIR`` continues it.
- **A lost worker** (process killed, out of memory, node gone) is replaced by a new actor and its
  unfinished prompts go back to the front of the queue; a prompt lost ``MAX_ATTEMPTS`` times stops
  the run with an error naming it. An exception raised by milr or a component (a critic's NaN, a
  cost cap) is not retried: it would fail again, so it stops the run as it would locally.
- **Caps stay global.** Budgets are per prompt and travel with it. ``api_judge``'s cost caps are
  per run: every worker's judge reserves and charges through one :class:`SpendLedger` actor on the
  driver's node, which keeps the run folder's spend files, so N workers never spend N caps.

Reference: Ray actors and fault tolerance (docs.ray.io, "Actors", "Actor fault tolerance").
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, NamedTuple

from milr.errors import UserError

# Attempts per prompt on workers that died under it (a crash, an OOM kill) before the run stops.
MAX_ATTEMPTS = 3


class RayClusterError(UserError):
    """The Ray cluster cannot host the workers the recipe asks for."""

    kind = "ray"


def connect(run: Any) -> dict:
    """Start (or join, with ``RAY_ADDRESS``) a Ray cluster and check it can host ``run.workers``.

    Called before the run folder exists, so a cluster too small is a one-line error and no folder.
    """
    import ray

    if not ray.is_initialized():
        # log_to_driver off: workers' warnings would interleave with the driver's one line per prompt.
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    have = ray.cluster_resources()
    need = {"GPU": run.workers * run.gpus_per_worker, "CPU": run.workers * run.cpus_per_worker}
    for kind, n in need.items():
        if n > have.get(kind, 0) + 1e-9:
            key = "gpus_per_worker" if kind == "GPU" else "cpus_per_worker"
            raise RayClusterError(f"run.workers={run.workers} x run.{key}={getattr(run, key)} needs {n:g} {kind}s; "
                                  f"the Ray cluster has {have.get(kind, 0):g}")
    return have


class SpendLedger:
    """api_judge's spend for the whole run, shared by every worker (a Ray actor on the driver's node).

    One :class:`milr.critics.api_judge.SpendFile` per spend key, in the run folder (the files a local
    run keeps), so a resumed run, local or Ray, continues the caps.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.files: dict[str, Any] = {}

    def _file(self, key: str) -> Any:
        if key not in self.files:
            from milr.critics.api_judge import SpendFile  # only runs with a judge pay for the import

            self.files[key] = SpendFile(self.run_dir, key)
        return self.files[key]

    def reserve(self, key: str, *args: Any) -> tuple:
        return self._file(key).reserve(*args)

    def charge(self, key: str, *args: Any) -> tuple:
        return self._file(key).charge(*args)


class _LedgerProxy:
    """One spend key's view of the run's ledger, for a worker's judge; synchronous, as the cap must hold
    before a request is sent."""

    def __init__(self, handle: Any, key: str):
        self.handle, self.key = handle, key

    def reserve(self, *args: Any) -> tuple:
        import ray

        return ray.get(self.handle.reserve.remote(self.key, *args))

    def charge(self, *args: Any) -> tuple:
        import ray

        return ray.get(self.handle.charge.remote(self.key, *args))


class RunnerSeam(NamedTuple):
    """The runner's per-prompt code the executor runs: passed in by :func:`milr.runner.run_recipe` (module-level
    functions, which Ray sends to the workers by reference), so this module never imports the runner that calls it."""

    build_components: Callable
    solve: Callable
    write_result: Callable
    each_critic: Callable


def share_spend(critics: list, ledger: Any, each_critic: Callable) -> None:
    """Point every critic that spends money (``share_spend``) at the run's ledger, through wrappers and ensembles."""
    for c in each_critic(critics):
        if callable(getattr(type(c), "share_spend", None)):
            c.share_spend(lambda key: _LedgerProxy(ledger, key))


class Worker:
    """One device's share of the run: the model and critics, built once (a Ray actor)."""

    def __init__(self, recipe: dict, ledger: Any, seam: RunnerSeam):
        import torch

        from milr.factory import resolve_device
        from milr.recipe import load_recipe

        self.seam = seam
        self.failed: BaseException | None = None
        try:
            self.recipe = load_recipe(recipe)
            run = self.recipe.run
            # Ray gives an actor its CPUs as a number, not as threads: use them, as run.threads does locally.
            torch.set_num_threads(run.threads or max(1, int(run.cpus_per_worker)))
            self.components = seam.build_components(self.recipe, resolve_device(run.device))
            c = self.components
            share_spend([c.critic, *c.members.values(), *c.evals.values()], ledger, seam.each_critic)
        except Exception as e:  # noqa: BLE001 - raised again by solve(), so the driver stops with this error
            # Ray reports an exception in a constructor as a dead actor, which the driver would retry.
            self.failed = e

    def solve(self, feed: Any, worker: int) -> Iterator[tuple[Any, dict]]:
        """Pull prompts from ``feed`` as batch slots free up; yield each one's
        :class:`~milr.run_record.PromptRecord` and images (uint8: what the PNG stores, a quarter of the bytes)
        as it finishes (a Ray streaming generator)."""
        import ray

        if self.failed is not None:
            raise self.failed

        def pull() -> Iterator[Any]:
            while chunk := ray.get(feed.pull.remote(worker)):
                yield from chunk

        for result, images in self.seam.solve(self.components, pull()):
            yield result, _to_uint8(images)


# A pull takes at most this many prompts: one queue's worth per worker split CHUNK_SPLIT ways.
MAX_CHUNK = 16
CHUNK_SPLIT = 4


class Feed:
    """The run's queue of prompts (a Ray actor on the driver's node): workers pull chunks.

    Every prompt a worker pulled is that worker's; if the worker dies, :meth:`give_back` returns
    them and the driver queues again those it has not written.
    """

    def __init__(self, tasks: list, workers: int = 1):
        self.queue = deque(tasks)
        self.workers = max(1, workers)
        self.taken: dict[int, list] = {}

    def pull(self, worker: int) -> list:
        n = min(MAX_CHUNK, len(self.queue), -(-len(self.queue) // (CHUNK_SPLIT * self.workers)))
        chunk = [self.queue.popleft() for _ in range(n)]
        self.taken.setdefault(worker, []).extend(chunk)
        return chunk

    def give_back(self, worker: int) -> list:
        return sorted(self.taken.pop(worker, []), key=lambda t: t.index)

    def requeue(self, tasks: list) -> int:
        self.queue.extendleft(reversed(tasks))  # first in line: a retried prompt does not wait for the rest
        return len(self.queue)


def _to_uint8(images: dict) -> dict:
    # A quarter of the bytes to ship; the PNG writer takes uint8 as-is, so the file is the same.
    from milr.records import to_uint8

    return {"initial": to_uint8(images["initial"]), "final": to_uint8(images["final"]),
            "steps": [(step, to_uint8(t)) for step, t in images.get("steps", [])]}


def run_ray(recipe: Any, record: Any, todo: list, total: int, seam: RunnerSeam,
            log: Callable[[str], None] = lambda s: None, progress_lines: bool = True, bar: Any = None) -> None:
    """Solve ``todo`` on ``recipe.run.workers`` Ray actors; the results go to ``record`` as they come."""
    import ray
    from ray.exceptions import (ActorUnavailableError, ObjectLostError, OutOfMemoryError, OwnerDiedError,
                                RayActorError, RayTaskError, WorkerCrashedError)

    lost = (RayActorError, ActorUnavailableError, WorkerCrashedError, OutOfMemoryError, ObjectLostError, OwnerDiedError)
    run = recipe.run
    connect(run)
    here = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    on_driver = NodeAffinitySchedulingStrategy(here, soft=False)
    ledger = ray.remote(num_cpus=0)(SpendLedger).options(scheduling_strategy=on_driver).remote(str(record.dir))
    worker_cls = ray.remote(num_cpus=run.cpus_per_worker, num_gpus=run.gpus_per_worker, max_restarts=0)(Worker)
    recipe_dict = recipe.to_dict()

    # The feed hands out prompts; both it and the ledger live where the run folder is.
    feed = ray.remote(num_cpus=0)(Feed).options(scheduling_strategy=on_driver).remote(todo, run.workers)
    attempts: dict[str, int] = {}
    streams: dict[Any, int] = {}  # each worker's stream of results -> the worker's number
    actors: list[Any] = [None] * min(run.workers, len(todo))
    done_n = total - len(todo)
    written: set[str] = set()  # prompts this driver wrote: a dead worker's give-back skips them

    def start(i: int) -> None:
        actors[i] = worker_cls.remote(recipe_dict, ledger, seam)  # loads the model and critics once
        streams[actors[i].solve.remote(feed, i)] = i

    try:
        for i in range(len(actors)):
            start(i)
        while streams:
            ready, _ = ray.wait(list(streams), num_returns=1)
            i = streams[ready[0]]
            try:
                result, images = ray.get(next(ready[0]))
            except StopIteration:  # the queue was empty when this worker asked
                del streams[ready[0]]
                continue
            except RayTaskError as e:  # milr or a component raised: the same error a local run stops with
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, BaseException) else e) from None
            except lost as e:
                del streams[ready[0]]
                ray.kill(actors[i], no_restart=True)
                tasks = [t for t in ray.get(feed.give_back.remote(i)) if t.id not in written]
                why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
                for t in tasks:
                    attempts[t.id] = attempts.get(t.id, 0) + 1
                    if attempts[t.id] >= MAX_ATTEMPTS:
                        raise RuntimeError(f"prompt {t.id!r}: its worker died {attempts[t.id]} times (last: {why}); "
                                           "the run stops here, resume it with `milr run --resume RUN_DIR`") from None
                ray.get(feed.requeue.remote(tasks))
                log(f"milr: worker {i} lost ({type(e).__name__}); {len(tasks)} prompt(s) go back to the queue")
                start(i)  # a fresh actor takes its place
                continue
            seam.write_result(record, result, images)
            written.add(result.id)
            done_n += 1
            if bar is not None:  # a tqdm bar (a terminal); otherwise one line per prompt
                bar.update(1)
                bar.set_postfix(reward=f"{result.final.reward:.3f}")
            if progress_lines:
                log(f"milr: [{done_n}/{total}] {result.id}: reward {result.initial.reward:.4g} -> "
                    f"{result.final.reward:.4g}, {result.steps} steps, {result.seconds:.1f} s, worker {i}")
    finally:
        for a in [*actors, feed, ledger]:
            if a is not None:
                ray.kill(a, no_restart=True)
