"""Many prompts in one batch (run.batch_prompts, milr/batching.py): records as alone, every strategy, the batch stays full."""

import dataclasses
import threading

import pytest

from milr.batching import BatchStats
from milr.interfaces import Candidate, Search
from milr.recipe import load_recipe, preflight
from milr.runner import build_components, solve
from milr.search.latent_space import LatentSpace, count_latents, sample_tokens
from test_runner import kill_and_resume

PROMPTS = [f"toy prompt {i}" for i in range(6)]


def toy_recipe(search, n=len(PROMPTS), **run):
    return load_recipe({
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "toy_mug:TargetTokenCritic"}],
        "evaluate": [{"name": "toy_mug:TargetTokenCritic", "positions": 2}],
        "search": search,
        "prompts": {"inline": PROMPTS[:n]},
        "run": {"seed": 1, **run},
    })


def comparable(record):
    """A record without its wall-clock fields (the only ones that may differ with the batch)."""
    d = record.to_json()
    d.pop("seconds")
    for budget in [d["budget"]] + [t["budget"] for t in d["trace"] if "budget" in t]:
        budget.pop("seconds")
    return d


def prompt_threads() -> list[str]:
    # Only the batcher's own threads: other tests of the session may leave unrelated ones (servers, Ray).
    return [t.name for t in threading.enumerate() if t.name.startswith("milr-prompt-")]


def records(components, tasks, batch, stats=None):
    return {r.id: comparable(r) for r, _ in solve(components, tasks, batch, stats=stats)}


def assert_same_alone_and_batched(components, tasks, batch=3):
    stats = BatchStats()
    alone, batched = records(components, tasks, 1), records(components, tasks, batch, stats)
    assert batched == alone
    assert max(n for _, n in stats.calls) == min(batch, len(tasks))  # really merged
    assert prompt_threads() == []  # every prompt thread ended
    return stats


# -- a prompt's record does not depend on its batch-mates --------------------------------------------
@pytest.mark.parametrize("search", [
    {"name": "reinforce", "steps": 3},
    {"name": "reinforce", "preset": "faithful", "steps": 3, "threshold": 0.4},
    {"name": "reinforce", "mode": "text", "steps": 2},
    {"name": "reinforce", "mode": "image", "steps": 2, "samples": 3},
    {"name": "reinforce", "schedule": "alternate", "steps": 3},
    {"name": "reinforce", "schedule": "text_then_image", "steps": 3},
    {"name": "best_of_n", "n": 5, "batch_size": 2},
    {"name": "best_of_n", "n": 6, "batch_size": 3, "reasoning": False},
    {"name": "cma_es", "generations": 2, "popsize": 4},
    {"name": "generate"},
], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_every_strategy_gives_the_same_records_batched(search):
    r = toy_recipe(search)
    assert_same_alone_and_batched(build_components(r, "cpu"), preflight(r))


def test_every_registered_strategy_is_covered():
    from milr.registry import SEARCHES

    assert set(SEARCHES.names()) <= {"reinforce", "best_of_n", "cma_es", "generate"}


def test_budget_caps_are_per_prompt_when_batched():
    r = toy_recipe({"name": "reinforce", "steps": 50}, budget={"generator_tokens": 400, "critic_calls": 9})
    comps, tasks = build_components(r, "cpu"), preflight(r)
    batched = records(comps, tasks, 4)
    assert batched == records(comps, tasks, 1)
    assert all(rec["budget"]["critic_calls"] <= 9 and rec["budget"]["generator_tokens"] <= 400 + 40 for rec in batched.values())


def test_minimug_records_are_the_same_batched():
    from milr.models.minimug.model import MiniMUG

    r = toy_recipe({"name": "reinforce", "steps": 1, "samples": 2}, n=4)
    comps = build_components(r, "cpu")
    from doubles import BrightnessCritic

    critic = BrightnessCritic()
    comps = dataclasses.replace(comps, model=MiniMUG.random(seed=3), critic=critic, members={"brightness": critic},
                                evals={}, curve_evals={})
    # Prompts of different lengths: merged states are left-padded, each row as alone.
    tasks = [dataclasses.replace(t, prompt=p) for t, p in zip(preflight(r), [
        "a red circle", "two blue squares left of a green triangle", "a cross", "three yellow circles"])]
    stats = assert_same_alone_and_batched(comps, tasks)
    assert {"reason", "sample_image", "image_context"} <= {m for m, n in stats.calls if n > 1}


# -- plugins: a strategy written against the template, and one with its own ask/tell ------------------
class LatentPlugin(Search):
    """The plugin of milr.search.latent_space's docstring: sampled image prefixes, a mean-shift update."""

    def _start(self):
        self.space = LatentSpace(self.model, self.task.prompt, self.generator)

    def _propose(self):
        if self.step == 0:
            text, img, pixels = self.space.initial()
            self.z = img.hidden[0, :count_latents(0.25, img.tokens.shape[1])].clone()
            return [Candidate(image=pixels[0], step=0, tokens=img.tokens[0], text=text.texts[0])]
        if self.step > 2:
            return []
        k = self.affordable(3)
        logits = self.model.image_logits(self.z, self.space.cfg) / self.space.temperature
        self.prefixes = sample_tokens(logits, self.generator, k)
        plans, tokens, pixels = self.space.decode(k, image_prefixes=self.prefixes)
        return [Candidate(image=pixels[i], step=self.step, tokens=tokens[i], text=plans[i]) for i in range(k)]

    def _update(self, candidates, rewards):
        if self.step > 0:
            self.z = self.z + 0.1 * float(rewards.max() - rewards.mean())
        return {"moved": self.step > 0}

    def _finished(self):
        return self.step > 2


def test_plugin_strategies_run_batched():
    for search in ({"name": "test_batching:LatentPlugin"},
                   {"name": "doubles:ScriptedSearch", "colours": [[0.1, 0.2, 0.3], [0.9, 0.1, 0.1]]}):
        r = toy_recipe(search)
        assert_same_alone_and_batched(build_components(r, "cpu"), preflight(r))


# -- the batch stays full: finished prompts leave, the next join ---------------------------------------
class Generations(Search):
    """``1 + index % 3`` plain generations (through ``model.generate``), so prompts finish at different steps."""

    def _propose(self):
        _, img, pixels = self.model.generate([self.task.prompt], generator=self.generator)
        return [Candidate(image=pixels[0], step=self.step, tokens=img.tokens[0])]

    def _update(self, candidates, rewards):
        return None

    def _finished(self):
        return self.step >= 1 + self.task.index % 3


def test_finished_prompts_leave_and_the_next_join():
    r = toy_recipe({"name": "test_batching:Generations"})
    stats = BatchStats()
    out = list(solve(build_components(r, "cpu"), preflight(r), 3, stats=stats))
    # steps 1,2,3,1,2,3: rounds of 3 prompts while any wait, then the last ones drain
    assert stats.sizes("sample_image") == [3, 3, 3, 2, 1]
    assert sum(stats.sizes("sample_image")) == sum(1 + i % 3 for i in range(6)) == sum(rec.steps for rec, _ in out)
    # in the order they finish: 3 (in 0's slot) and 1 finish in one round, yielded in slot order
    assert [rec.index for rec, _ in out] == [0, 3, 1, 2, 4, 5]


# -- failures -----------------------------------------------------------------------------------------
def test_an_error_in_one_prompt_stops_the_run_and_its_threads():
    from toy_mug import TargetTokenCritic

    class Failing(TargetTokenCritic):
        def score(self, images, prompts, metadata):
            if "toy prompt 4" in prompts:
                raise ValueError("critic failed on toy prompt 4")
            return super().score(images, prompts, metadata)

    r = toy_recipe({"name": "reinforce", "steps": 2})
    bad = Failing()
    comps = build_components(r, "cpu")
    comps = dataclasses.replace(comps, critic=bad, members={"t": bad})
    seen = []
    with pytest.raises(ValueError, match="toy prompt 4"):
        for rec, _ in solve(comps, preflight(r), 3):
            seen.append(rec.prompt)
    assert "toy prompt 4" not in seen and prompt_threads() == []


def test_kill_and_resume_batched(tmp_path):
    kill_and_resume(tmp_path, batch_prompts=3)


def test_batch_prompts_is_checked_with_the_recipe():
    from milr.recipe import RecipeError

    with pytest.raises(RecipeError, match="batch_prompts"):
        toy_recipe({"name": "generate"}, batch_prompts=0)


def test_batch_agreement_benchmark_takes_recipe_overrides(capsys):
    """benchmarks/batch_agreement.py passes dotted overrides to the recipe (the faithful preset here:
    one candidate per step), runs every batch size on them, and refuses a bad one in one line."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import batch_agreement

    assert batch_agreement.main(["--recipe", "quickstart-oracle", "search.preset=faithfull"]) == 2
    assert "did you mean 'faithful'" in capsys.readouterr().err
    argv = ["--recipe", "quickstart-oracle", "search.preset=faithful", "--per-tag", "1", "--steps", "1", "--batches", "1", "3"]
    assert batch_agreement.main(argv) == 0
    out = capsys.readouterr().out
    assert "'preset': 'faithful'" in out.splitlines()[0]
    rows = [line for line in out.splitlines() if line.startswith("| 3 | ")]
    assert len(rows) == 1 and "| 0 of 6 (0.0%) |" in rows[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_multinomial_rows_draws_what_torch_multinomial_draws_per_prompt(dtype):
    # The batched sampler must be torch.multinomial(probs[run], 1, generator=g) run by run, bit for bit:
    # that is what keeps a prompt's record independent of the prompts that share its batch.
    import torch

    from milr.interfaces import multinomial_rows

    dt = getattr(torch, dtype)
    for case in range(40):
        rng = torch.Generator().manual_seed(case)
        sizes = torch.randint(1, 5, (torch.randint(1, 6, (1,), generator=rng).item(),), generator=rng).tolist()
        vocab = int(torch.randint(2, 300, (1,), generator=rng))
        probs = torch.softmax(3 * torch.randn(sum(sizes), vocab, generator=rng), -1).to(dt)
        probs[0, : vocab // 2] = 0  # zero-probability entries are never drawn
        runs, start = [], 0
        for i, n in enumerate(sizes):
            runs.append((start, start + n, torch.Generator().manual_seed(1000 * case + i)))
            start += n
        got = multinomial_rows(probs, runs)
        want = torch.cat([torch.multinomial(probs[s:e], 1, generator=torch.Generator().manual_seed(1000 * case + i))[:, 0]
                          for i, (s, e, _) in enumerate(runs)])
        assert torch.equal(got, want), (case, sizes, vocab)
        assert bool((probs.float().gather(1, got[:, None]) > 0).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1])
def test_multinomial_rows_refuses_what_torch_multinomial_refuses(bad):
    import torch

    from milr.interfaces import multinomial_rows

    probs = torch.full((3, 8), 1 / 8)
    probs[2, 5] = bad
    with pytest.raises(RuntimeError, match="inf.*nan.*< 0"):
        multinomial_rows(probs, [(0, 3, torch.Generator().manual_seed(0))])
    with pytest.raises(RuntimeError):
        torch.multinomial(probs, 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_exponential_rows_draws_what_exponential_draws(dtype):
    # multinomial_rows's draws must be torch's own, value for value, and leave the generator where
    # torch's kernel leaves it: the next draws of the prompt depend on it.
    import torch

    from milr.interfaces import exponential_rows

    dt = getattr(torch, dtype)
    for seed, shape in [(0, (2500, 2048)), (1, (3, 1)), (2, (7, 5, 11)), (3, (0, 4))]:
        want_g, got_g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        want = torch.empty(shape, dtype=dt).exponential_(1, generator=want_g)
        got = exponential_rows(torch.empty(shape, dtype=dt), got_g)
        assert got.dtype == dt and torch.equal(got, want), (dtype, shape, int((got != want).sum()))
        assert torch.equal(got_g.get_state(), want_g.get_state())
    # rows of a bigger buffer (what multinomial_rows passes) are filled in place, the rest untouched
    buf = torch.full((4, 16), -1.0, dtype=dt)
    exponential_rows(buf[1:3], torch.Generator().manual_seed(5))
    assert torch.equal(buf[1:3], torch.empty(2, 16, dtype=dt).exponential_(1, generator=torch.Generator().manual_seed(5)))
    assert bool((buf[[0, 3]] == -1).all())
