"""Every registered critic, search and model, read from the registries (a new component is tested
here without editing this file), and the component factory (:mod:`milr.factory`) they are built by.

Per component: its card is declared; its signature validates through the recipe validator with the
default arguments (the only problems reported are the required arguments); the card's facts equal
the built component's where it builds offline in seconds (shipped weights, the tiny test models),
and a component whose weights are missing offline fails with a one-line message saying what to
get -- never a silent skip; every search runs the toy loop (``tests/toy_mug.py``) within a budget.
The MUG conformance suite for models is ``tests/mug_conformance.py``.
"""

from __future__ import annotations

import inspect
import math
import sys

import pytest
import torch

import milr.critics  # noqa: F401  (the index of built-in critics)
import milr.models  # noqa: F401
import milr.search  # noqa: F401
from milr.errors import UserError
from milr.factory import INJECTED, build_component, build_critic
from milr.interfaces import Budget
from milr.recipe import ComponentSpec, CriticSpec, validate_component_args
from milr.registry import CRITICS, MODELS, SEARCHES
from toy_mug import TargetTokenCritic, ToyMUG, toy_loop

COMPONENTS = [(reg, name) for reg in (CRITICS, SEARCHES, MODELS) for name in reg.names()]
IDS = [f"{reg.kind}:{name}" for reg, name in COMPONENTS]
BUILT_OFFLINE_COST = ("cheap",)  # critics built here when their weights are present: seconds, not minutes
SMOKE_HIDDEN = 1024  # models built here: hidden size at most this (MiniMUG; Janus-Pro is 2048-4096)
PROMPT, METADATA = "a photo of a red circle", {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}


def required(cls) -> list[str]:
    """Constructor arguments without a default that a recipe must give (the factory injects the rest)."""
    params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters.values()
    return [p.name for p in params if p.default is p.empty and p.name != "self" and p.name not in INJECTED
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def assert_one_line_offline_error(err: BaseException) -> None:
    """A missing weight or key is a one-line message saying what is missing (the CLI prints it, exit 2)."""
    msg = str(err)
    assert isinstance(err, (UserError, FileNotFoundError, ValueError, OSError)), f"{type(err).__name__}: {msg}"
    assert msg and "\n" not in msg and "Traceback" not in msg
    assert any(w in msg.lower() for w in ("download", "cache", "not set", "not found", "no weights", "offline")), msg


def built_or_offline_error(reg, name: str, **inject):
    """The component built with its defaults, or (its weights or key missing offline) the one-line error
    checked and a skip that says why. Components not cheap to build are skipped with the reason."""
    cls, card = reg.get(name), reg.card(name)
    need = required(cls)
    if need:
        pytest.skip(f"{name} needs arguments {need}: built in its own tests")
    preflight = getattr(cls, "preflight", None)
    if callable(preflight):
        try:
            preflight({})
        except Exception as e:  # noqa: BLE001  (what matters is the message, checked next)
            assert_one_line_offline_error(e)
            pytest.skip(f"{name}: weights or key missing offline; the one-line error was checked: {e}")
    if reg is CRITICS and getattr(card, "cost", "cheap") not in BUILT_OFFLINE_COST:
        pytest.skip(f"{name}: card cost {card.cost!r}; built in its own tests")
    if reg is MODELS and (card.hidden_size or 0) > SMOKE_HIDDEN:
        pytest.skip(f"{name}: hidden size {card.hidden_size}, not a smoke-size model; tests/test_janus_pro.py builds a tiny one")
    try:
        return build_component(reg, name, {}, device="cpu", **inject)
    except Exception as e:  # noqa: BLE001
        assert_one_line_offline_error(e)
        pytest.skip(f"{name}: weights missing offline; the one-line error was checked: {e}")


@pytest.mark.parametrize("reg,name", COMPONENTS, ids=IDS)
def test_card_is_declared(reg, name):
    card = reg.card(name)
    assert card is not None and card.summary.strip(), f"{reg.kind} {name!r} has no card (milr list shows it)"
    own = getattr(reg.get(name), "card", None)
    assert own is None or own == card  # the index's card and the class's are one card


TAGS = [(reg, name, tag) for reg, name in COMPONENTS for tag in reg.tags(name)]


@pytest.mark.parametrize("reg,name,tag", TAGS, ids=[f"{r.kind}:{n}.{t}" for r, n, t in TAGS])
def test_every_tag_is_a_preset_whose_arguments_validate(reg, name, tag):
    preset = reg.tags(name)[tag]
    assert preset and reg.tag_args(f"{name}.{tag}") == preset and reg.resolve_name(f"{name}.{tag}") == name
    errors = validate_component_args(reg, ComponentSpec(name=name, **preset), reg.kind, None)
    assert sorted(e.path for e in errors) == sorted(f"{reg.kind}.{p}" for p in required(reg.get(name)))


@pytest.mark.parametrize("reg,name", COMPONENTS, ids=IDS)
def test_signature_validates_with_defaults(reg, name):
    errors = validate_component_args(reg, ComponentSpec(name=name), reg.kind, None)
    # The only problems with no arguments at all are the required ones, each reported by its key.
    assert sorted(e.path for e in errors) == sorted(f"{reg.kind}.{p}" for p in required(reg.get(name)))


@pytest.mark.parametrize("name", CRITICS.names())
def test_critic_card_facts_equal_the_built_critic(name):
    critic = built_or_offline_error(CRITICS, name, model=ToyMUG())
    card, own = CRITICS.card(name), critic.card
    for fact in ("higher_is_better", "differentiable", "needs_metadata", "input_size", "max_text_tokens"):
        assert getattr(own, fact) == getattr(card, fact), f"{name}: card says {fact}={getattr(card, fact)!r}, built {getattr(own, fact)!r}"
    assert tuple(own.score_range) == tuple(card.score_range)
    size = card.input_size or 32
    scores = critic.score(torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)), [PROMPT] * 3, [METADATA] * 3)
    lo, hi = card.score_range
    assert scores.shape == (3,) and all(lo <= float(s) <= hi and math.isfinite(float(s)) for s in scores)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_card_facts_equal_the_built_model(name):
    model = built_or_offline_error(MODELS, name)
    card = MODELS.card(name)
    for fact in ("image_tokens", "hidden_size", "default_cfg", "default_temperature"):
        assert getattr(model, fact) == getattr(card, fact), f"{name}: card says {fact}={getattr(card, fact)!r}, built {getattr(model, fact)!r}"
    pixels = model.decode_image(torch.zeros(1, model.image_tokens, dtype=torch.long))
    assert tuple(pixels.shape[-2:]) == (card.image_size, card.image_size)
    # The latents the card lists are there: reasoning and image hidden states of the hidden size.
    state = model.encode_prompts([PROMPT])
    if "text" in card.latents:
        assert model.reason(state).hidden[0].shape[-1] == card.hidden_size
    if "image" in card.latents:
        img = model.sample_image(model.image_context(state), generator=torch.Generator().manual_seed(0))
        assert tuple(img.hidden.shape[-3:]) == (card.image_tokens, 2, card.hidden_size)


class LatentProbe(ToyMUG):
    """ToyMUG counting the head calls a search makes itself (decoding latents), not the model's own sampling."""

    searcher_head_calls = 0

    def _probe(self) -> None:
        f = sys._getframe(2)
        while f is not None and f.f_globals.get("__name__") in (__name__, "milr.interfaces"):
            f = f.f_back  # image_logits (milr.interfaces) calls image_head: look past it to the caller
        if f is not None and f.f_globals.get("__name__") != ToyMUG.__module__:
            self.searcher_head_calls += 1

    def text_head(self, hidden):
        self._probe()
        return super().text_head(hidden)

    def image_head(self, hidden):
        self._probe()
        return super().image_head(hidden)


@pytest.mark.parametrize("name", SEARCHES.names())
@pytest.mark.parametrize("budget", [Budget(critic_calls=5), Budget(generator_tokens=600)], ids=["critic_calls", "tokens"])
def test_every_search_runs_the_toy_loop_within_its_budget(name, budget):
    model = LatentProbe()
    search = build_component(SEARCHES, name, {})
    s, means = toy_loop(search, model, TargetTokenCritic(), budget=budget)
    # The card's needs_latents is what the search does: decode last-layer latents through the heads.
    assert (model.searcher_head_calls > 0) == SEARCHES.card(name).needs_latents
    assert means and s.ledger.critic_calls == sum(len(t["rewards"]) for t in s.trace)
    if budget.critic_calls is not None:
        assert s.ledger.critic_calls <= budget.critic_calls
    else:  # a step is sized from the measured cost of a candidate: the cap is kept to within its text
        assert s.ledger.generator_tokens <= budget.generator_tokens + 4 * model.max_text_tokens
    best, reward = s.best()
    assert best.image.shape[0] == 3 and any(reward == pytest.approx(r, abs=1e-6) for t in s.trace for r in t["rewards"])


# ---------------------------------------------------------------------------------------------
# The factory
# ---------------------------------------------------------------------------------------------
def test_factory_records_every_argument_with_its_default():
    critic = build_critic(CriticSpec(name="toy_mug:TargetTokenCritic", positions=3), None, "cpu")
    # TargetTokenCritic records its own init_args; a critic that does not gets the factory's record.
    assert critic.init_args["positions"] == 3
    judge = build_critic(CriticSpec(name="self_judge", combine="mean"), ToyMUG(), "cpu")
    assert judge.init_args["combine"] == "mean" and judge.init_args["questions"] == "auto"  # the default, recorded
    assert judge.init_args["model"] == judge.model.fingerprint() and "device" not in judge.init_args


def test_two_minimugs_with_different_weights_no_longer_share_self_judge_cache_keys():
    from milr.critics.cache import CachedCritic, ScoreCache
    from milr.models.minimug.model import MiniMUG

    a, b, a_again = MiniMUG.random(seed=0), MiniMUG.random(seed=1), MiniMUG.random(seed=0)
    assert a.card == b.card  # the old key read the card's weights text: equal, so the two collided
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == a_again.fingerprint()
    judges = [build_critic(CriticSpec(name="self_judge"), m, "cpu") for m in (a, b, a_again)]
    assert judges[0].identity() != judges[1].identity() and judges[0].identity() == judges[2].identity()
    cache = ScoreCache()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sa = CachedCritic(judges[0], cache).score(x, [PROMPT] * 2, [METADATA] * 2)
    sb = CachedCritic(judges[1], cache).score(x, [PROMPT] * 2, [METADATA] * 2)
    assert len(cache) == 4 and not torch.allclose(sa, sb)  # b scored with its own weights, not a's cached scores
    CachedCritic(judges[2], cache).score(x, [PROMPT] * 2, [METADATA] * 2)
    assert len(cache) == 4 and cache.hits == 2  # the same weights again: served from the cache


def test_every_builder_goes_through_the_factory(monkeypatch):
    """Ensemble members, best_of_n's prefilter and the distillation teacher are built by the factory,
    with the model and its device injected (the prefilter used to get neither)."""
    import milr.factory
    from milr.critics.ensemble import Ensemble
    from milr.interfaces import BudgetLedger, Task
    from milr.search.best_of_n import BestOfN
    from milr.training.distill import build_teacher

    calls = []
    real = milr.factory.build_component
    monkeypatch.setattr(milr.factory, "build_component",
                        lambda reg, name, args, **kw: calls.append((name, kw.get("device"))) or real(reg, name, args, **kw))
    model = ToyMUG()
    Ensemble([{"name": "toy_mug:TargetTokenCritic"}, {"name": "self_judge"}], model=model, device="cpu")
    search = BestOfN(n=3, prefilter_k=1, prefilter_critic="self_judge")
    search.setup(model, Task(index=0, prompt=PROMPT), BudgetLedger(None, model.counter), torch.Generator().manual_seed(0))
    assert search._prefilter.model is model
    teacher = build_teacher({"critics": [{"name": "toy_mug:TargetTokenCritic"}]})
    assert isinstance(teacher, Ensemble)
    assert calls == [("toy_mug:TargetTokenCritic", "cpu"), ("self_judge", "cpu"), ("self_judge", str(model.device)),
                     ("toy_mug:TargetTokenCritic", "cpu")]


# ---------------------------------------------------------------------------------------------
# CONTRIBUTING's plugin search, built from the text alone
# ---------------------------------------------------------------------------------------------
def contributing_plugin() -> str:
    """The python block of CONTRIBUTING.md that registers a search."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "@SEARCHES.register(" in b]
    return block


def test_contributing_plugin_search_builds_registers_and_runs_under_milr_run(tmp_path, monkeypatch):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    code = contributing_plugin()
    assert len(code.splitlines()) < 40  # a plugin search is short
    (tmp_path / "my_search.py").write_text(code)
    # Importing it registers its name (the registry restored afterwards, so other tests see the built-ins).
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(SEARCHES, "_entries", dict(SEARCHES._entries))
    import my_search

    assert SEARCHES.get("prefix_climb") is my_search.PrefixClimb
    assert validate_component_args(SEARCHES, ComponentSpec(name="prefix_climb", steps=3, keep="half"), "search", None)
    # `milr run` with the plugin named by import path, on ToyMUG, under a critic-call budget.
    recipe = {"model": {"name": "toy_mug:ToyMUG"}, "critics": [{"name": "toy_mug:TargetTokenCritic"}],
              "search": {"name": "my_search:PrefixClimb", "steps": 3, "k": 2},
              "prompts": {"inline": ["a toy prompt", "another toy prompt"]},
              "run": {"seed": 0, "output_dir": str(tmp_path / "runs"), "budget": {"critic_calls": 6}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent)])}
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", str(tmp_path / "recipe.yaml")], capture_output=True,
                         text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines = [json.loads(s) for s in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for r in lines:  # the ordinary generation, then 2 + 2 + 1 climbs: the budget cuts the last step
        assert [len(t["rewards"]) for t in r["trace"]] == [1, 2, 2, 1] and r["budget"]["critic_calls"] == 6
        assert r["final"]["reward"] >= r["initial"]["reward"]
