"""Many prompts in one batch (``run.batch_prompts``): each prompt's search runs unchanged, the calls merge.

At batch 1 a model's decoding is bound by reading its weights (about 14 GB per token step for a 7B
model, MILR issue 12), so the runner decodes many prompts' rows together. Rather than make every
search strategy batch-aware, each prompt keeps its own ask/tell loop (``milr.runner.run_task``) in
its own thread, against *proxies* of the model and critics. A proxied call (``encode_prompts``,
``reason``, ``image_context``, ``sample_image``, ``decode_image``, ``yes_probability`` and a
critic's ``score``) parks the thread; the coordinator (the caller's thread) waits until every live
prompt is parked or finished, merges the parked calls that can share a batch -- same method, same
sampling arguments -- into one call, splits the result and wakes the threads. A prompt that finishes
leaves and the next one joins, so the batch stays full. Strategies need no change, plugins included.

Only one thread runs at a time, in slot order (a baton), so everything a search does between two
model calls (Adam steps, pycma, its own draws) happens exactly as it would alone, and a prompt's
record does not depend on which prompts share its batch:

* randomness: a merged ``sample_image`` gets one generator per prompt row, and each prompt's rows
  draw from its own generator in one call (:func:`milr.interfaces.generator_runs`);
* budgets: the model counts tokens per row (:class:`milr.interfaces.TokenCounter`), and each
  prompt's counter receives its rows' counts; its ledger's clock leaves out the time it spent
  waiting for others, keeping its share of each merged call;
* critics: a merged ``score`` never holds two prompts with the same text (ensembles group rows by
  prompt), its ``last_*`` attributes are sliced per prompt, and a critic with per-prompt state
  (an ensemble's agreement gate) gets one copy per prompt and is called per prompt.

Models merge prompt states and image contexts through :meth:`MUGModel.merge_rows` /
:meth:`MUGModel.split_rows` (``batches_prompts = True``); a model without them is called once per
prompt (still correct). Calls that only concatenate (pixel decoding, critics) are merged for every
model. Numerics: merged matrix products may round differently from a batch of one, so a sampled
token can flip where two candidates are almost tied (``benchmarks/batch_agreement.py`` measures it).
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

from milr.interfaces import Critic, ImageResult, MUGModel, TextResult, TokenCounter

MODEL_CALLS = ("encode_prompts", "reason", "image_context", "sample_image", "decode_image", "yes_probability")
DECODING = ("reason", "sample_image")  # the token-by-token calls, where a batch pays most


class _Cancelled(BaseException):
    """Raised in a parked prompt thread when the run stops early (another prompt failed)."""


@dataclass
class BatchStats:
    """What the coordinator did: one ``(method, prompts in the call)`` per call it made, and the
    number of prompts in the batch at each round (all parked, then their calls run)."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    def sizes(self, method: str) -> list[int]:
        return [n for m, n in self.calls if m == method]


@dataclass
class _Call:
    slot: "_Slot"
    target: Any  # the real model or critic
    method: str
    bound: inspect.BoundArguments
    grad: bool  # the calling thread's grad mode (thread-local in torch)

    def arg(self, name: str) -> Any:
        return self.bound.arguments[name]


class _RowCounter:
    """Stands in for ``model.counter`` during one call: the total goes to the model's own counter, each
    prompt's rows to that prompt's counter (``parts``: ``(rows, counter)`` in row order)."""

    def __init__(self, real: TokenCounter, parts: list[tuple[int, TokenCounter]]):
        self.real, self.parts = real, parts

    @property
    def text_tokens(self) -> int:
        return self.real.text_tokens

    @property
    def image_tokens(self) -> int:
        return self.real.image_tokens

    def add_text(self, n: Any) -> None:
        self._add("text", n)

    def add_image(self, n: Any) -> None:
        self._add("image", n)

    def _add(self, kind: str, n: Any) -> None:
        getattr(self.real, f"add_{kind}")(n)
        if len(self.parts) == 1:
            getattr(self.parts[0][1], f"add_{kind}")(n)
            return
        rows = sum(r for r, _ in self.parts)
        if isinstance(n, (int, float)) or getattr(n, "ndim", 1) == 0:
            # A total can be split evenly only where every row decodes the same count (image tokens
            # of one merged sample_image); reasoning rows stop at different lengths.
            if kind == "text" or int(n) % rows:
                raise RuntimeError(f"the model counted {int(n)} {kind} tokens as one total over a merged batch of {rows} "
                                   "rows; a model with batches_prompts passes per-row counts to its TokenCounter")
            per = [int(n) // rows] * rows
        else:
            per = [int(x) for x in n]
            if len(per) != rows:
                raise RuntimeError(f"the model counted {kind} tokens for {len(per)} rows of a merged batch of {rows}")
        i = 0
        for r, counter in self.parts:
            getattr(counter, f"add_{kind}")(sum(per[i:i + r]))
            i += r


def _set_rows(obj: Any, n: int) -> Any:
    """Remember how many prompt rows a state or context holds (the search passes it back later)."""
    try:
        object.__setattr__(obj, "_milr_batch_rows", n)
    except (AttributeError, TypeError):  # slots or frozen: it is then never merged
        pass
    return obj


def _rows_of(obj: Any) -> Optional[int]:
    return getattr(obj, "_milr_batch_rows", None)


class _Slot:
    """One prompt in the batch: its thread, its counter and the call it is parked in."""

    def __init__(self, coordinator: "Coordinator", index: int, task: Any):
        self.coordinator, self.index, self.task = coordinator, index, task
        self.counter = TokenCounter()
        self.ledger: Any = None  # the prompt's BudgetLedger once its loop made it (for its clock)
        self.go = threading.Semaphore(0)
        self.call: Optional[_Call] = None
        self.reply: Optional[tuple[Any, Optional[BaseException], float]] = None
        self.cancelled = False
        self.held = 0  # decoding rounds this prompt's call waited for a larger group
        self.finished = False
        self.outcome: Any = None
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None
        self._critics: dict[int, "CriticProxy"] = {}

    def park(self, target: Any, method: str, args: tuple, kwargs: dict) -> Any:
        """Hand a call to the coordinator and wait for its result (raised if it failed)."""
        import torch

        bound = inspect.signature(getattr(target, method)).bind(*args, **kwargs)
        bound.apply_defaults()
        self.call = _Call(self, target, method, bound, torch.is_grad_enabled())
        t0 = time.perf_counter()
        self.coordinator._back.release()
        self.go.acquire()
        if self.cancelled:
            raise _Cancelled()
        value, error, share = self.reply
        self.reply = None
        if self.ledger is not None:  # waiting for other prompts is not this prompt's search time
            self.ledger.exclude_seconds(time.perf_counter() - t0 - share)
        if error is not None:
            raise error
        return value

    def critic(self, critic: Optional[Critic]) -> Any:
        """This prompt's proxy of ``critic`` (one per critic; a stateful one gets its own copy)."""
        if critic is None:
            return None
        if id(critic) not in self._critics:
            target = critic
            if getattr(critic, "gate", None) is not None:
                # An agreement gate keeps one incumbent per prompt and drops those absent from a call:
                # each prompt gets its own gate (and is scored alone).
                target = copy.copy(critic)
                target.gate = copy.deepcopy(critic.gate)
            self._critics[id(critic)] = CriticProxy(self, target)
        return self._critics[id(critic)]


class ModelProxy:
    """A prompt's view of the model: batched calls park, the rest go to the model with this prompt's counter."""

    def __init__(self, slot: _Slot, model: MUGModel):
        self._slot, self._model = slot, model
        self.counter = slot.counter

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if name in MODEL_CALLS:
            return lambda *args, **kwargs: self._slot.park(self._model, name, args, kwargs)
        if inspect.ismethod(value) and value.__self__ is self._model:
            return self._with_counter(value)
        return value

    def _with_counter(self, fn: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            # Only this prompt's thread runs now (the baton), so swapping the model's counter is safe.
            with self._slot.coordinator._counting([(1, self.counter)]):
                return fn(*args, **kwargs)

        return call

    # generate() from the interface, through this proxy's batched calls.
    generate = MUGModel.generate


class CriticProxy:
    """A prompt's view of a critic: ``score`` parks; ``last_*`` attributes are this prompt's rows."""

    def __init__(self, slot: _Slot, critic: Critic):
        self._slot, self._critic = slot, critic

    def score(self, images: Any, prompts: list[str], metadata: Optional[list[dict]] = None) -> Any:
        return self._slot.park(self._critic, "score", (images, prompts, metadata), {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._critic, name)


MUGModel.register(ModelProxy)
Critic.register(CriticProxy)


class Coordinator:
    """Runs prompts ``batch_prompts`` at a time, merging their model and critic calls (see the module docstring)."""

    def __init__(self, model: MUGModel, batch_prompts: int, stats: Optional[BatchStats] = None, max_hold: int = 2):
        if batch_prompts < 1:
            raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
        self.model, self.size, self.stats = model, batch_prompts, stats
        self.merges = bool(getattr(model, "batches_prompts", False))
        self.max_hold = max_hold
        self._back = threading.Semaphore(0)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, tasks: Iterable[Any], work: Callable[[Any, _Slot], Any]) -> Iterator[tuple[Any, Any]]:
        """Yield ``(task, work(task, slot))`` as prompts finish; ``work`` runs in the prompt's thread and
        uses ``ModelProxy(slot, model)`` / ``slot.critic(c)``. An error in one prompt stops the run."""
        pending = iter(tasks)
        live: list[_Slot] = []
        try:
            while True:
                while len(live) < self.size:
                    task = next(pending, None)
                    if task is None:
                        break
                    used = {s.index for s in live}
                    slot = _Slot(self, min(i for i in range(self.size) if i not in used), task)
                    slot.thread = threading.Thread(target=self._body, args=(slot, work), daemon=True,
                                                   name=f"milr-prompt-{slot.index}")
                    slot.thread.start()
                    self._resume(slot)
                    live.append(slot)
                    live.sort(key=lambda s: s.index)
                if not live:
                    return
                done = [s for s in live if s.finished]
                for s in done:
                    live.remove(s)
                    s.thread.join()
                    if s.error is not None:
                        raise s.error
                    yield s.task, s.outcome
                if not done:
                    self._round(live)
        finally:
            for s in live:  # an error, or the caller stopped early: end the parked threads
                if not s.finished:
                    s.cancelled = True
                    s.go.release()
                    s.thread.join()

    def _body(self, slot: _Slot, work: Callable[[Any, _Slot], Any]) -> None:
        slot.go.acquire()
        try:
            if not slot.cancelled:
                slot.outcome = work(slot.task, slot)
        except _Cancelled:
            pass
        except BaseException as e:  # raised again in the coordinator's thread
            slot.error = e
        finally:
            slot.finished = True
            self._back.release()

    def _resume(self, slot: _Slot) -> None:
        """Give the baton to ``slot``'s thread until it parks in a call or finishes."""
        slot.go.release()
        self._back.acquire()

    def _round(self, live: list[_Slot]) -> None:
        """Run the parked calls: every cheap call, else (all parked in decoding) the largest group.

        Prompts flow through cheap calls (encodings, pixels, critics) and gather at the decoding
        calls. There, the largest group runs and the others wait, so prompts that drifted out of
        phase (one joined late, one stopped early) meet again at the same call: a group waits at
        most ``max_hold`` times, the most one cycle of a search's decoding calls takes.
        """
        if self.stats is not None:
            self.stats.rounds.append(len(live))
        cheap = [s.call for s in live if s.call.method not in DECODING]
        if cheap:
            run = self._groups(cheap)
        else:
            groups = self._groups([s.call for s in live])
            largest = max(groups, key=len)
            run = [g for g in groups if g is largest or any(c.slot.held >= self.max_hold for c in g)]
        for group in run:
            self._execute(group)
            for c in group:
                c.slot.held = 0
        chosen = {id(c.slot) for g in run for c in g}
        for s in live:
            if id(s) in chosen:
                s.call = None
                self._resume(s)
            else:
                s.held += 1

    # -- which calls share a batch ----------------------------------------------------------------
    def _key(self, call: _Call) -> Any:
        m, a = call.method, call.bound.arguments
        if call.target is not self.model:
            return ("score", id(call.target), call.grad) if m == "score" else None
        if m == "decode_image":
            t = a["tokens"]
            return (m, tuple(getattr(t, "shape", (None,))[1:]), call.grad)
        if m == "yes_probability":
            return (m, call.grad)
        if not self.merges:
            return None
        if m == "encode_prompts":
            return (m, call.grad) if isinstance(a["prompts"], (list, tuple)) else None
        if m == "reason":
            if _rows_of(a["state"]) is None:
                return None
            return (m, a["max_new_tokens"], a["use_prompt_cache"], call.grad)
        if m == "image_context":
            if _rows_of(a["state"]) is None:
                return None
            return (m, a["plans"] is None, call.grad)
        if m == "sample_image":
            if _rows_of(a["context"]) is None or isinstance(a["generator"], (list, tuple)):
                return None
            p = a["prefix_tokens"]
            return (m, 0 if p is None else int(p.shape[1]), a["cfg"], a["temperature"], a["use_prompt_cache"], call.grad)
        return None

    def _groups(self, calls: list[_Call]) -> list[list[_Call]]:
        """Calls grouped by key, in slot order; a critic group never holds one prompt text twice."""
        groups: list[list[_Call]] = []
        open_: dict[Any, list[_Call]] = {}
        for c in calls:
            key = self._key(c)
            group = open_.get(key) if key is not None else None
            if group is not None and c.method == "score":
                seen = {p for g in group for p in g.arg("prompts")}
                if seen & set(c.arg("prompts")):
                    group = None
            if group is None:
                group = []
                groups.append(group)
                if key is not None:
                    open_[key] = group
            group.append(c)
        return groups

    # -- running a group --------------------------------------------------------------------------
    def _execute(self, group: list[_Call]) -> None:
        import torch

        t0 = time.perf_counter()
        try:
            with torch.set_grad_enabled(group[0].grad):
                values = self._single(group[0]) if len(group) == 1 else self._merged(group)
        except Exception as e:
            if len(group) == 1:
                group[0].slot.reply = (None, e, time.perf_counter() - t0)
            else:
                for c in group:  # which prompt's call fails: each alone, the error goes to its thread
                    self._execute([c])
            return
        share = (time.perf_counter() - t0) / len(group)
        for c, v in zip(group, values):
            c.slot.reply = (v, None, share)
        if self.stats is not None:
            self.stats.calls.append((group[0].method, len(group)))

    @contextmanager
    def _counting(self, parts: list[tuple[int, TokenCounter]]) -> Iterator[None]:
        """The model's counter split by rows among the prompts of a call (see :class:`_RowCounter`)."""
        saved = self.model.counter
        self.model.counter = _RowCounter(saved, parts)
        try:
            yield
        finally:
            self.model.counter = saved

    def _single(self, call: _Call) -> list[Any]:
        fn = getattr(call.target, call.method)
        if call.target is not self.model:
            value = fn(*call.bound.args, **call.bound.kwargs)
            _copy_last(call.target, [call.slot], [len(call.arg("prompts"))])
            return [value]
        with self._counting([(1, call.slot.counter)]):
            value = fn(*call.bound.args, **call.bound.kwargs)
        if call.method == "encode_prompts":
            _set_rows(value, len(call.arg("prompts")))
        elif call.method == "image_context" and _rows_of(call.arg("state")) is not None:
            _set_rows(value, _rows_of(call.arg("state")))
        return [value]

    def _merged(self, group: list[_Call]) -> list[Any]:
        import torch

        m, model, first = group[0].method, self.model, group[0]
        if m == "score":
            sizes = [len(c.arg("prompts")) for c in group]
            md = [x for c in group for x in (c.arg("metadata") or [{}] * len(c.arg("prompts")))]
            out = first.target.score(torch.cat([c.arg("images") for c in group]), [p for c in group for p in c.arg("prompts")], md)
            _copy_last(first.target, [c.slot for c in group], sizes)
            return _split(out, sizes)
        if m == "decode_image":
            sizes = [int(c.arg("tokens").shape[0]) for c in group]
            return _split(model.decode_image(torch.cat([torch.as_tensor(c.arg("tokens")) for c in group])), sizes)
        if m == "yes_probability":
            sizes = [len(c.arg("questions")) for c in group]
            out = model.yes_probability(torch.cat([c.arg("images") for c in group]), [q for c in group for q in c.arg("questions")])
            return _split(out, sizes)
        if m == "encode_prompts":
            sizes = [len(c.arg("prompts")) for c in group]
            with self._counting([(n, c.slot.counter) for n, c in zip(sizes, group)]):
                state = model.encode_prompts([p for c in group for p in c.arg("prompts")])
            return [_set_rows(s, n) for s, n in zip(model.split_rows(state, sizes), sizes)]
        if m == "reason":
            sizes = [_rows_of(c.arg("state")) for c in group]
            prefix = None
            if any(c.arg("prefix_ids") is not None for c in group):  # no prefix = an empty one
                empty = torch.zeros(0, dtype=torch.long)
                prefix = [t for c, n in zip(group, sizes) for t in (c.arg("prefix_ids") or [empty] * n)]
            with self._counting([(n, c.slot.counter) for n, c in zip(sizes, group)]):
                text = model.reason(model.merge_rows([c.arg("state") for c in group]), prefix_ids=prefix,
                                    max_new_tokens=first.arg("max_new_tokens"), use_prompt_cache=first.arg("use_prompt_cache"))
            return [TextResult(ids=text.ids[a:b], texts=text.texts[a:b], hidden=text.hidden[a:b]) for a, b in _spans(sizes)]
        if m == "image_context":
            sizes = [_rows_of(c.arg("state")) for c in group]
            plans = None if first.arg("plans") is None else [p for c in group for p in c.arg("plans")]
            with self._counting([(n, c.slot.counter) for n, c in zip(sizes, group)]):
                ctx = model.image_context(model.merge_rows([c.arg("state") for c in group]), plans)
            return [_set_rows(x, n) for x, n in zip(model.split_rows(ctx, sizes), sizes)]
        if m == "sample_image":
            # Every call as num_samples=1 over its context's rows repeated num_samples times (the
            # same rows, in the same prompt-major order), so calls with different counts merge.
            contexts, sizes = [], []
            for c in group:
                k, ctx = c.arg("num_samples"), c.arg("context")
                n = _rows_of(ctx)
                contexts += [ctx] if k == 1 else [part for part in model.split_rows(ctx, [1] * n) for _ in range(k)]
                sizes.append(n * k)
            gens = [c.arg("generator") for c, n in zip(group, sizes) for _ in range(n)]
            prefix = None if first.arg("prefix_tokens") is None else torch.cat([torch.as_tensor(c.arg("prefix_tokens")) for c in group])
            with self._counting([(n, c.slot.counter) for n, c in zip(sizes, group)]):
                img = model.sample_image(
                    model.merge_rows(contexts), num_samples=1, prefix_tokens=prefix, cfg=first.arg("cfg"),
                    temperature=first.arg("temperature"), generator=gens,
                    return_hidden=any(c.arg("return_hidden") for c in group), use_prompt_cache=first.arg("use_prompt_cache"))
            return [ImageResult(tokens=img.tokens[a:b], hidden=img.hidden[a:b] if img.hidden is not None and c.arg("return_hidden") else None,
                                cfg=img.cfg, temperature=img.temperature) for c, (a, b) in zip(group, _spans(sizes))]
        raise AssertionError(f"no merge rule for {m}")


def _spans(sizes: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


def _split(x: Any, sizes: list[int]) -> list[Any]:
    return [x[a:b] for a, b in _spans(sizes)]


def _copy_last(critic: Any, slots: list[_Slot], sizes: list[int]) -> None:
    """Give each prompt's proxy its rows of the critic's ``last_*`` attributes (ensembles' components,
    which the per-step curve reads after each score call)."""
    total = sum(sizes)
    for name, value in list(vars(critic).items()):
        if not name.startswith("last_"):
            continue
        for s, (a, b) in zip(slots, _spans(sizes)):
            proxy = next((p for p in s._critics.values() if p._critic is critic), None)
            if proxy is not None:
                proxy.__dict__[name] = _rows(value, a, b, total)


def _rows(value: Any, a: int, b: int, total: int) -> Any:
    if isinstance(value, dict):
        return {k: _rows(v, a, b, total) for k, v in value.items()}
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) and shape[0] == total:
        return value[a:b]
    return value
