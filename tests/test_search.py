"""Search strategies on the controllable toy model/critic pair (tests/toy_mug.py), whose optimum is known."""

import pytest
import torch

from milr.interfaces import Budget, BudgetLedger, Task
from milr.search.best_of_n import BestOfN
from milr.search.cma_es import CMAES
from milr.search.generate import PlainGeneration
from milr.search.reinforce import Reinforce, count_latents
from mug_conformance import CHECKS, MUGConformance
from toy_mug import TargetTokenCritic, ToyMUG, toy_loop

SEEDS = range(10)
PROMPTS = [f"toy prompt {i}" for i in SEEDS]


@pytest.fixture(scope="module")
def model():
    return ToyMUG()


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def _run_suite(make, model, critic, budget=None):
    """(mean initial reward, mean returned reward, mean reward of the last step) over the seed set."""
    init, final, last = [], [], []
    for seed, prompt in zip(SEEDS, PROMPTS):
        search, means = toy_loop(make(), model, critic, prompt=prompt, seed=seed, budget=budget)
        init.append(means[0])
        final.append(search.best()[1])
        last.append(means[-1])
    return _mean(init), _mean(final), _mean(last)


# -- the test double itself ------------------------------------------------------------------
_CONFORMANCE = MUGConformance(lambda: ToyMUG(), prompts=["a red circle", "two blue squares left of a cross"])


@pytest.mark.parametrize("check", CHECKS)
def test_toy_mug_keeps_the_mug_contract(check):
    _CONFORMANCE.run(check)


def test_target_token_critic_reads_tokens_back(model):
    tokens = torch.tensor([[1, 1, 2, 1] + [0] * 12, [3] * 16])
    images = model.decode_image(tokens)
    r = TargetTokenCritic(target=1, positions=4).score(images, ["p", "p"], [{}, {}])
    assert r.tolist() == [0.75, 0.0]
    r = TargetTokenCritic(target=1, positions=4).score(images, ["p", "p"], [{"target": 3}, {"target": 3}])
    assert r.tolist() == [0.0, 1.0]


# -- every strategy raises the mean reward over a fixed seed set ------------------------------
@pytest.mark.parametrize("mode", ["both", "image", "text"])
def test_reinforce_raises_reward_in_each_mode(model, mode):
    critic = TargetTokenCritic()
    init, final, last = _run_suite(lambda: Reinforce(mode=mode, steps=5, image_fraction=0.25, lr=0.1), model, critic)
    assert final > init + 0.15, f"mode {mode}: best reward {final:.3f} vs initial {init:.3f}"
    if mode != "text":  # the image latents act on the rewarded positions directly: the policy itself improves
        assert last > init + 0.05, f"mode {mode}: last-step mean reward {last:.3f} vs initial {init:.3f}"


def test_reinforce_faithful_with_threshold_raises_reward(model):
    # A 0/1 critic and the code's stop rule: the last image is returned, and it passes once found.
    critic = TargetTokenCritic(positions=1)
    init, final, last = _run_suite(lambda: Reinforce(preset="faithful", steps=20, threshold=0.9), model, critic)
    assert final > init + 0.4, f"faithful: returned {final:.3f} vs initial {init:.3f}"


def test_cma_es_raises_reward(model):
    critic = TargetTokenCritic()
    init, final, _ = _run_suite(lambda: CMAES(image_fraction=0.25, popsize=4, generations=5, sigma=1.0), model, critic)
    assert final > init + 0.15, f"cma_es: best {final:.3f} vs initial {init:.3f}"


@pytest.mark.parametrize("reasoning", [True, False])
def test_best_of_n_raises_reward(model, reasoning):
    critic = TargetTokenCritic()
    init, final, _ = _run_suite(lambda: BestOfN(n=16, batch_size=5, reasoning=reasoning), model, critic)
    assert final > init + 0.15, f"best_of_n: best {final:.3f} vs initial {init:.3f}"


def test_plain_generation_is_every_searchs_first_candidate(model):
    def first(search):
        search.setup(model, Task(index=0, prompt="p"), BudgetLedger(None, model.counter), torch.Generator().manual_seed(3))
        (c,) = search.ask()  # the first ask is one ordinary generation
        return c

    base = first(PlainGeneration())
    for search in (Reinforce(), BestOfN(), CMAES()):
        c = first(search)
        assert torch.equal(c.tokens, base.tokens) and c.text == base.text, type(search).__name__
    s, means = toy_loop(PlainGeneration(), model, TargetTokenCritic(), prompt="p", seed=3)
    assert len(means) == 1 and s.done()


# -- the faithful update, by hand ---------------------------------------------------------------
def _adam(z, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam with PyTorch's default betas, written out."""
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        z = z - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return z


def _dloss_dlogits(logits, R):
    """d/dlogits of -R * sum log(softmax(logits)[argmax] + 1e-8 + 1e-10), per row."""
    q = torch.softmax(logits, -1)
    tok = logits.argmax(-1)
    onehot = torch.nn.functional.one_hot(tok, logits.shape[-1]).to(q)
    q_tok = q.gather(-1, tok[:, None])
    return -R * q_tok / (q_tok + 1e-8 + 1e-10) * (onehot - q)


def test_faithful_update_matches_hand_computed_adam_steps(model):
    prompt = "toy prompt 1"
    state = model.encode_prompts([prompt])
    M = len(model.reason(state).ids[0])
    assert M >= 3
    lr = 0.03
    search = Reinforce(preset="faithful", mode="both", steps=5, lr=lr, text_fraction=2.5 / M, image_fraction=2.5 / 16)
    ledger = BudgetLedger(None, model.counter)
    search.setup(model, Task(index=0, prompt=prompt), ledger, torch.Generator().manual_seed(0))
    (c0,) = search.ask()
    assert search.z_text.shape == (2, model.hidden_size) and search.z_image.shape == (2, 2, model.hidden_size)
    zt0, zv0 = search.z_text.detach().clone(), search.z_image.detach().clone()

    w, T = model.default_cfg, model.default_temperature
    rewards = [0.25, 0.5]
    grads_t, grads_v = [], []
    zt, zv = zt0, zv0
    for r in rewards:
        search.tell([c0], torch.tensor([r]))
        search.ask()  # the update of this step happens first, with the previous image's reward
        R = r - 1.0  # the code's non-positive convention for a [0, 1] critic
        # text: logits = z W_t^T + b_t
        g_logits = _dloss_dlogits(zt @ model.W_t.T + model.b_t, R)
        grads_t.append(g_logits @ model.W_t)
        # image: fused = (u + w (c - u)) / T with c, u = z_{cond,uncond} W_v^T + b_v
        c = zv[:, 0] @ model.W_v.T + model.b_v
        u = zv[:, 1] @ model.W_v.T + model.b_v
        g_f = _dloss_dlogits((u + w * (c - u)) / T, R)
        grads_v.append(torch.stack([(w / T) * g_f @ model.W_v, ((1 - w) / T) * g_f @ model.W_v], dim=1))
        zt = _adam(zt0, grads_t, lr)
        zv = _adam(zv0, grads_v, lr)
        torch.testing.assert_close(search.z_text.detach(), zt, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(search.z_image.detach(), zv, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(zt, zt0) and not torch.allclose(zv, zv0)


def test_faithful_returns_last_image_and_default_the_best(model):
    critic = TargetTokenCritic()
    for preset, want in (("faithful", "_last"), ("default", "_best")):
        s, _ = toy_loop(Reinforce(preset=preset, steps=4, image_fraction=0.25), model, critic, prompt="p", seed=1)
        assert s.best() is getattr(s, want)


# -- stopping and budgets -----------------------------------------------------------------------
def test_threshold_stops_before_the_next_step(model):
    search = Reinforce(preset="faithful", steps=10, threshold=0.5)
    search.setup(model, Task(index=0, prompt="p"), BudgetLedger(None, model.counter), torch.Generator().manual_seed(0))
    (c,) = search.ask()
    search.tell([c], torch.tensor([0.2]))
    assert not search.done()
    (c,) = search.ask()
    search.tell([c], torch.tensor([0.7]))
    assert search.done()
    assert search.best()[1] == pytest.approx(0.7)
    # An initial image that already passes is kept, with no update at all.
    search.setup(model, Task(index=0, prompt="p"), BudgetLedger(None, model.counter), torch.Generator().manual_seed(0))
    (c,) = search.ask()
    z0 = search.z_text.detach().clone()
    search.tell([c], torch.tensor([0.9]))
    assert search.done() and torch.equal(search.z_text.detach(), z0)


# Each strategy with a count large enough that only the budget can stop it.
every_strategy = pytest.mark.parametrize("make", [
    lambda: Reinforce(steps=50),
    lambda: BestOfN(n=100, batch_size=4),
    lambda: CMAES(generations=50, popsize=4),
], ids=["reinforce", "best_of_n", "cma_es"])


@every_strategy
def test_critic_call_budget_is_exact(model, make):
    s, _ = toy_loop(make(), model, TargetTokenCritic(), budget=Budget(critic_calls=11))
    assert s.ledger.critic_calls == 11
    assert sum(len(t["rewards"]) for t in s.trace) == 11


@every_strategy
def test_token_budget_stops_the_loop(model, make):
    cap = 3000
    s, _ = toy_loop(make(), model, TargetTokenCritic(), budget=Budget(generator_tokens=cap))
    assert s.ledger.exhausted() or s.done()
    one = 2 * model.image_tokens + model.max_text_tokens  # most a candidate can cost
    # A step is sized from the measured cost of a candidate, so the cap is (nearly) kept...
    assert s.ledger.generator_tokens <= cap + 4 * model.max_text_tokens
    # ...and the budget is used up to less than one step.
    assert s.ledger.generator_tokens >= cap - 4 * one


# -- schedules and modes touch the right latents ------------------------------------------------
def _latent_changes(model, search, steps):
    search.setup(model, Task(index=0, prompt="toy prompt 2"), BudgetLedger(None, model.counter), torch.Generator().manual_seed(0))
    critic = TargetTokenCritic()
    changed = []
    cands = search.ask()
    for _ in range(steps):
        search.tell(cands, critic.score(torch.stack([c.image for c in cands]), ["p"] * len(cands), [{}] * len(cands)))
        zt, zv = search.z_text.detach().clone(), search.z_image.detach().clone()
        cands = search.ask()  # faithful: this step's update happens here
        changed.append({k for k, a, b in (("text", zt, search.z_text), ("image", zv, search.z_image)) if not torch.equal(a, b.detach())})
    return changed


@pytest.mark.parametrize("schedule,expected", [
    ("joint", [{"text", "image"}] * 4),
    ("alternate", [{"text"}, {"image"}, {"text"}, {"image"}]),
    ("text_then_image", [{"text"}, {"text"}, {"image"}, {"image"}]),
])
def test_schedules_touch_the_right_latents(model, schedule, expected):
    search = Reinforce(preset="faithful", schedule=schedule, steps=4, image_fraction=0.25)
    assert _latent_changes(model, search, 4) == expected
    assert [set(t["updated"]) for t in search.trace[1:]] == expected[:3]


@pytest.mark.parametrize("mode", ["text", "image"])
def test_single_modality_modes_keep_the_other_fixed(model, mode):
    search = Reinforce(preset="faithful", mode=mode, steps=3, image_fraction=0.25)
    search.setup(model, Task(index=0, prompt="p"), BudgetLedger(None, model.counter), torch.Generator().manual_seed(0))
    cands = search.ask()
    plan = cands[0].text
    assert (search.z_text is None) == (mode == "image") and (search.z_image is None) == (mode == "text")
    texts = []
    for _ in range(3):
        search.tell(cands, torch.tensor([0.0]))
        cands = search.ask()
        texts.append(cands[0].text)
    if mode == "image":
        assert all(t == plan for t in texts), "image mode must keep the initial plan"


# -- speed: prompt caches and batched candidates --------------------------------------------------
def test_prompt_and_context_are_encoded_once(model):
    p0, c0 = model.prompt_encodes, model.context_encodes
    s, _ = toy_loop(Reinforce(mode="image", steps=6, samples=4), model, TargetTokenCritic(), prompt="p")
    # one prompt row for the initial generation and one 4-row batch state, however many steps
    assert model.prompt_encodes - p0 == 1 + 4
    assert model.context_encodes - c0 == 1 + 4
    p0 = model.prompt_encodes
    toy_loop(Reinforce(mode="image", steps=6, samples=4, use_prompt_cache=False), model, TargetTokenCritic(), prompt="p")
    assert model.prompt_encodes - p0 > 5 * 6


def test_candidates_of_a_step_are_one_batch(model):
    calls = []
    orig = model.sample_image

    def spy(ctx, num_samples=1, prefix_tokens=None, **kw):
        calls.append(ctx.cond.shape[0] * num_samples)
        return orig(ctx, num_samples=num_samples, prefix_tokens=prefix_tokens, **kw)

    model.sample_image = spy
    try:
        toy_loop(Reinforce(steps=3, samples=4), model, TargetTokenCritic(), prompt="p")
        assert calls == [1, 4, 4, 4]
        calls.clear()
        toy_loop(BestOfN(n=9, batch_size=4), model, TargetTokenCritic(), prompt="p")
        assert calls == [1, 4, 4]
    finally:
        del model.sample_image


class _RecordingCritic(TargetTokenCritic):
    def score(self, images, prompts, metadata):
        r = super().score(images, prompts, metadata)
        self.seen = r.clone()
        return r


def test_best_of_n_cascade_sends_only_top_k_to_the_critic(model):
    cheap = _RecordingCritic(positions=2)
    search = BestOfN(n=12, batch_size=4, prefilter_k=3)
    search.set_prefilter_critic(cheap)
    search.setup(model, Task(index=0, prompt="p"), BudgetLedger(None, model.counter), torch.Generator().manual_seed(2))
    (initial,) = search.ask()
    search.tell([initial], torch.tensor([0.0]))
    kept = search.ask()
    assert cheap.calls == 11 and len(kept) == 3
    top3 = sorted(cheap.seen.tolist(), reverse=True)[:3]
    assert sorted((c.info["prefilter_score"] for c in kept), reverse=True) == top3
    search.tell(kept, torch.tensor([0.1, 0.3, 0.2]))
    assert search.done() and search.best()[0] is kept[1]
    assert search.trace[-1]["prefilter_calls"] == 11
    with pytest.raises(ValueError, match="prefilter critic"):
        BestOfN(prefilter_k=2).setup(model, Task(index=0, prompt="p"), BudgetLedger(), torch.Generator())


@pytest.mark.parametrize("diagonal", [True, False])
def test_cma_es_covariance_option(model, diagonal):
    s, _ = toy_loop(CMAES(generations=2, popsize=4, diagonal=diagonal), model, TargetTokenCritic(), prompt="p")
    assert bool(s.es.opts["CMA_diagonal"]) is diagonal
    assert s.generation == 2 and [len(t["rewards"]) for t in s.trace] == [1, 4, 4]


def test_cma_es_popsize_from_budget(model):
    s, _ = toy_loop(CMAES(generations=4, image_fraction=0.25), model, TargetTokenCritic(), budget=Budget(critic_calls=33))
    assert s.es.popsize == 8  # (33 - 1) // 4
    assert s.ledger.critic_calls == 33


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(preset="fast"), "preset"),
    (dict(mode="audio"), "mode"),
    (dict(schedule="zigzag"), "schedule"),
    (dict(text_fraction=1.5), "text_fraction"),
    (dict(samples=0), "samples"),
    (dict(lr=0), "lr"),
])
def test_reinforce_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Reinforce(**kwargs)


def test_count_latents():
    assert count_latents(0.02, 576) == 11  # the paper's 11 image latents of Janus-Pro
    assert count_latents(0.2, 37) == 7
    assert count_latents(0.02, 16) == 1 and count_latents(0.0, 16) == 0 and count_latents(0.2, 0) == 0


# -- milr compare ---------------------------------------------------------------------------------
def test_parse_search_specs():
    from milr.compare import parse_search_specs

    # the CLI splits on every comma; arguments in parentheses survive
    specs = parse_search_specs(["reinforce(mode=text", "steps=3)", "bon=best_of_n(n=4)", "cma_es"])
    assert specs == [
        {"label": "reinforce(mode=text,steps=3)", "name": "reinforce", "args": {"mode": "text", "steps": 3}},
        {"label": "bon", "name": "best_of_n", "args": {"n": 4}},
        {"label": "cma_es", "name": "cma_es", "args": {}},
    ]
    with pytest.raises(ValueError, match="key=value"):
        parse_search_specs("reinforce(steps)")
    with pytest.raises(ValueError, match="unique"):
        parse_search_specs("cma_es,cma_es")


def test_bootstrap_interval():
    from milr.compare import bootstrap_interval

    est, lo, hi = bootstrap_interval([0.0, 1.0] * 20, n_resamples=500)
    assert est == 0.5 and 0.2 < lo < 0.5 < hi < 0.8
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    # overall = mean of category means, not the mean of prompts
    est, lo, hi = bootstrap_interval([1.0, 1.0, 1.0, 0.0], tags=["a", "a", "a", "b"], n_resamples=200)
    assert est == 0.5 and lo <= est <= hi


def test_compare_runs_strategies_at_a_matched_budget(tmp_path):
    import json

    from milr.compare import compare

    recipe = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "toy_mug:TargetTokenCritic"}],
        "evaluate": [{"name": "toy_mug:TargetTokenCritic", "positions": 2}],
        "search": {"name": "generate"},
        "prompts": {"inline": [{"prompt": f"toy {i}", "metadata": {"tag": "ab"[i % 2]}} for i in range(4)]},
        "run": {"seed": 0, "output_dir": str(tmp_path / "runs")},
    }
    out = compare(recipe, ["reinforce(steps=2,samples=2)", "best_of_n"], output_dir=tmp_path / "cmp",
                  n_resamples=200, progress=False, log=lambda s: None)
    table = json.loads((out / "compare.json").read_text())
    assert list(table["rows"]) == ["base", "reinforce(steps=2,samples=2)", "best_of_n"]
    assert table["tags"] == ["a", "b"] and table["metric"] == "toy_mug:TargetTokenCritic"
    cap = table["budget_generator_tokens"]
    milr_tokens = table["rows"]["reinforce(steps=2,samples=2)"]["generator_tokens"]
    assert cap >= milr_tokens  # the others get the reference's full (largest per-prompt) allowance
    assert table["rows"]["best_of_n"]["generator_tokens"] <= cap  # best_of_n sized to the same budget
    assert table["rows"]["best_of_n"]["critic_calls"] > 5  # ...which buys more than its default batch
    md = (out / "compare.md").read_text()
    assert "| base |" in md and "overall" in md and "95%" in md
    assert (out / "compare.png").stat().st_size > 1000


def test_compare_plot_colours_match_across_panels():
    from milr.compare import strategy_colours

    cycle = ["c0", "c1", "c2"]
    # "base" has no anytime curve (left panel) but a final point (right panel): the others keep
    # the colours they have in the right panel.
    table = {"rows": {"base": {}, "milr": {}, "bon": {}}, "curves": {"milr": {}, "bon": {}}}
    assert strategy_colours(table, cycle) == {"base": "c0", "milr": "c1", "bon": "c2"}
    table["rows"]["cma"] = {}
    assert strategy_colours(table, cycle)["cma"] == "c0"  # the cycle wraps


def test_step_cost_benchmark_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "milr_step_cost.py"
    spec = importlib.util.spec_from_file_location("milr_step_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--random", "--tiny", "--steps", "1", "--prompts", "1"]) == 0
    out = capsys.readouterr().out
    assert "MILR step / (plain generation + critic call) =" in out and "prompt-KV reuse speed-up" in out
