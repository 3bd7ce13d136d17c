"""Reward-hacking diagnostics: per-step curves, curves.png, the summary's hacking check, the guard.

The constructed case: a scripted search proposes flat-colour images whose brightness (the search
critic, hackable) rises at every step while "red minus green" (the truth, held out) first rises,
then falls below the initial image's value.
"""

import json

import pytest
import torch
import yaml

from milr.diagnostics import Guard, hacking_check, hacking_report
from milr.interfaces import Candidate
from milr.recipe import RecipeError, load_recipe
from milr.records import RunRecord
from milr.runner import run_recipe

# (r, g, b): brightness = mean, truth = r - g
COLOURS = [
    [0.3, 0.3, 0.3],  # step 0: brightness 0.3, truth  0.0 (the initial image)
    [0.6, 0.3, 0.3],  # step 1: brightness 0.4, truth  0.3 (better by both)
    [0.4, 0.6, 0.5],  # step 2: brightness 0.5, truth -0.2 (hacked)
    [0.4, 0.8, 0.6],  # step 3: brightness 0.6, truth -0.4 (hacked)
    [0.6, 1.0, 0.8],  # step 4: brightness 0.8, truth -0.4 (hacked)
]
BRIGHT = [sum(c) / 3 for c in COLOURS]
TRUTH = [c[0] - c[1] for c in COLOURS]


def write_recipe(tmp_path, name="r", critics=None, evaluate=None, guard=None, tag="counting", prompts=1, **extra):
    data = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": critics or [{"name": "doubles:BrightnessCritic"}],
        "evaluate": [{"name": "doubles:RednessCritic"}] if evaluate is None else evaluate,
        "search": {"name": "doubles:ScriptedSearch", "colours": COLOURS},
        "prompts": {"inline": [{"prompt": f"a red thing {i}", "metadata": {"tag": tag}} for i in range(prompts)]},
        "run": {"seed": 0, "output_dir": str(tmp_path / "runs"), "name": name},
        **extra,
    }
    if guard is not None:
        data["guard"] = guard
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def final_colour(run_dir, result):
    from PIL import Image
    import numpy as np

    arr = np.asarray(Image.open(run_dir / result["images"]["final"]).convert("RGB"), dtype=float) / 255
    return arr.reshape(-1, 3).mean(0)


def test_without_guard_the_final_is_the_hacked_image(tmp_path):
    run_dir = run_recipe(write_recipe(tmp_path), progress=False)
    (r,) = RunRecord(run_dir).results()
    assert r["final"]["reward"] == pytest.approx(BRIGHT[4], abs=1e-6)
    assert r["final"]["eval"]["doubles:RednessCritic"] == pytest.approx(TRUTH[4], abs=1e-6)
    assert "guard" not in r
    assert r["budget"]["critic_calls"] == 5  # held-out per-step scores are not in the ledger


def test_guard_stops_and_returns_last_unrejected_image(tmp_path):
    guard = {"critic": {"name": "doubles:RednessCritic"}, "patience": 2, "tolerance": 0.0}
    run_dir = run_recipe(write_recipe(tmp_path, guard=guard, evaluate=[]), progress=False)
    (r,) = RunRecord(run_dir).results()
    # steps 2 and 3 raise brightness above the initial 0.3 while the truth drops below 0.0: two
    # rejected steps in a row = patience, so the search stops after step 3 and step 4 is never asked
    assert r["guard"]["stopped"] is True and r["guard"]["stopped_at_step"] == 3
    assert r["steps"] == 4
    assert [h["rejected"] for h in r["guard"]["history"]] == [False, False, True, True]
    # the returned image is step 1's: the last best-so-far the guard did not reject
    assert r["guard"]["returned_step"] == 1 and r["final"]["step"] == 1
    assert r["final"]["reward"] == pytest.approx(BRIGHT[1], abs=1e-6)
    assert final_colour(run_dir, r) == pytest.approx(COLOURS[1], abs=1 / 255)
    assert r["guard"]["returned"] == pytest.approx(TRUTH[1], abs=1e-6)
    # guard calls are a real cost: one per distinct best-so-far (steps 0-3), on top of 4 search calls
    assert r["budget"]["critic_calls"] == 4 + 4
    summary = (run_dir / "summary.md").read_text()
    assert "Guard (doubles:RednessCritic) stopped the search early on 1 of 1 prompts" in summary


def test_guard_tolerance_and_patience(tmp_path):
    # the truth never falls more than 0.5 below its start: no step is rejected, the search runs out
    lenient = {"critic": {"name": "doubles:RednessCritic"}, "tolerance": 0.5}
    (r,) = RunRecord(run_recipe(write_recipe(tmp_path, "lenient", guard=lenient), progress=False)).results()
    assert r["guard"]["stopped"] is False and r["steps"] == 5
    assert r["final"]["reward"] == pytest.approx(BRIGHT[4], abs=1e-6)
    # patience 5 is never reached, but the search ends on a rejected image: step 1's is returned
    patient = {"critic": {"name": "doubles:RednessCritic"}, "patience": 5}
    (r,) = RunRecord(run_recipe(write_recipe(tmp_path, "patient", guard=patient), progress=False)).results()
    assert r["guard"]["stopped"] is False and r["steps"] == 5
    assert r["final"]["step"] == 1 and r["final"]["eval"]["doubles:RednessCritic"] == pytest.approx(TRUTH[1], abs=1e-6)


def test_guard_streak_resets_on_an_accepted_step():
    scores = iter([0.0, -1.0, 0.5, -1.0, -1.0])
    g = Guard(critic=None, patience=2)
    g.start(lambda image: next(scores))
    cands = [Candidate(image=torch.zeros(3, 2, 2), step=i) for i in range(4)]
    assert not g.observe(0, cands[0], 0.0, cands[0], 0.0)  # guard 0.0 (start)
    assert not g.observe(1, cands[0], 0.0, cands[1], 1.0)  # guard -1.0: rejected, streak 1
    assert not g.observe(2, cands[0], 0.0, cands[2], 2.0)  # guard 0.5: accepted, streak reset
    assert g.returned()[0] is cands[2]
    assert not g.observe(3, cands[0], 0.0, cands[3], 3.0)  # guard -1.0: streak 1
    assert g.observe(4, cands[0], 0.0, cands[3], 3.0)  # same image, not re-scored: streak 2 -> stop
    assert g.stopped_at == 4 and g.returned() == (cands[2], 2.0)
    assert list(scores) == [-1.0]  # one value left: the repeated best-so-far was not scored again
    # a rise in the guard with no rise in the search reward is never a rejection
    g.start(lambda image: -5.0)
    g.observe(0, cands[0], 1.0, cands[1], 1.0)
    assert g.history[-1]["rejected"] is False


def test_curve_in_result_lines_and_hacking_section(tmp_path):
    run_dir = run_recipe(write_recipe(tmp_path, prompts=2), progress=False)
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    r = RunRecord(run_dir).results()[0]
    curve = r["curve"]
    assert [e["step"] for e in curve] == [0, 1, 2, 3, 4]
    for t, e in enumerate(curve):
        # brightness rises at every step, so the best-so-far is the step's own image
        assert e["reward"] == pytest.approx(BRIGHT[t], abs=1e-6)
        assert e["scores"]["doubles:BrightnessCritic"] == pytest.approx(BRIGHT[t], abs=1e-6)
        assert e["eval"]["doubles:RednessCritic"] == pytest.approx(TRUTH[t], abs=1e-6)
        assert e["chosen"]["candidate_step"] == t and e["candidate_step"] == t
    assert (run_dir / "curves.png").is_file()
    summary = (run_dir / "summary.md").read_text()
    assert "## Reward hacking check" in summary
    # +0.5 search reward (0.3 -> 0.8), truth 0.0 -> -0.4 on both prompts
    assert "- counting: search reward +0.500, doubles:RednessCritic -0.400 (2 of 2 prompts fell, 0 rose): " \
           "the search may be hacking the critic" in summary
    assert "**Possible reward hacking** in counting" in summary


def test_ensemble_curve_has_normalised_members(tmp_path):
    critics = [{"name": "doubles:BrightnessCritic"}, {"name": "doubles:BrightnessCritic", "scale": 2.0}]
    combine = {"normalize": {"doubles:BrightnessCritic": {"type": "affine", "scale": 10.0, "shift": -1.0}}}
    run_dir = run_recipe(write_recipe(tmp_path, critics=critics, combine=combine), progress=False)
    (r,) = RunRecord(run_dir).results()
    e = r["curve"][2]
    b = BRIGHT[2]
    assert e["scores"] == pytest.approx({"doubles:BrightnessCritic": b, "doubles:BrightnessCritic#1": 2 * b}, abs=1e-6)
    assert e["norm"] == pytest.approx({"doubles:BrightnessCritic": 10 * b - 1, "doubles:BrightnessCritic#1": 2 * b}, abs=1e-5)
    assert e["reward"] == pytest.approx(12 * b - 1, abs=1e-5)


def test_no_held_out_critic_is_said(tmp_path):
    run_dir = run_recipe(write_recipe(tmp_path, evaluate=[]), progress=False)
    summary = (run_dir / "summary.md").read_text()
    assert "No held-out critic was set" in summary and "may be hacking" not in summary
    assert (run_dir / "curves.png").is_file()


def _result(tag, r0, r1, e0, e1):
    return {"metadata": {"tag": tag}, "initial": {"reward": r0, "eval": {"oracle": e0}},
            "final": {"reward": r1, "eval": {"oracle": e1}}}


def test_hacking_check_by_hand():
    results = [
        _result("counting", 0.0, 2.0, 1.0, 0.0),   # reward +2, oracle fell
        _result("counting", 0.0, 1.0, 0.0, 0.0),   # reward +1, oracle unchanged
        _result("colors", 1.0, 2.0, 0.0, 1.0),     # reward +1, oracle rose
        _result("colors", 1.0, 0.0, 1.0, 1.0),     # reward -1, oracle unchanged
    ]
    check = hacking_check(results)
    rows = check["rows"]
    assert rows["counting"]["reward_delta"] == pytest.approx(1.5)
    assert rows["counting"]["eval"]["oracle"] == {"delta": -0.5, "fell": 1, "rose": 0, "n": 2, "hacking": True}
    assert rows["colors"]["reward_delta"] == pytest.approx(0.0)
    assert rows["colors"]["eval"]["oracle"]["hacking"] is False
    # overall = mean of category means: reward (1.5 + 0) / 2, oracle (-0.5 + 0.5) / 2
    assert rows["overall"]["reward_delta"] == pytest.approx(0.75)
    assert rows["overall"]["eval"]["oracle"] == {"delta": 0.0, "fell": 1, "rose": 1, "n": 4, "hacking": False}
    text = hacking_report(results)
    assert "- colors: search reward +0.000, oracle +0.500 (0 of 2 prompts fell, 1 rose): no held-out critic fell" in text
    assert "**Possible reward hacking** in counting:" in text


def test_nothing_fell_is_said():
    text = hacking_report([_result("counting", 0.0, 1.0, 0.0, 1.0)])
    assert "No category where the search reward rose while a held-out critic fell." in text


def test_guard_recipe_validation(tmp_path):
    with pytest.raises(RecipeError, match="guard.patience"):
        load_recipe(write_recipe(tmp_path, guard={"critic": {"name": "doubles:RednessCritic"}, "patience": 0}))
    with pytest.raises(RecipeError, match="did you mean 'tolerance'"):
        load_recipe(write_recipe(tmp_path, guard={"critic": {"name": "doubles:RednessCritic"}, "tolerence": 0.1}))
    with pytest.raises(RecipeError, match="guard must be held out"):
        load_recipe(write_recipe(tmp_path, guard={"critic": {"name": "doubles:BrightnessCritic"}}))
    with pytest.raises(RecipeError, match="guard.critic.bogus"):
        load_recipe(write_recipe(tmp_path, guard={"critic": {"name": "doubles:RednessCritic", "bogus": 1}}))
    r = load_recipe(write_recipe(tmp_path, guard={"critic": {"name": "doubles:RednessCritic"}}))
    assert (r.guard.patience, r.guard.tolerance) == (2, 0.0)


def test_per_step_held_out_scores_do_not_spend_the_time_budget(tmp_path):
    # a held-out critic taking 0.3 s per call would use up a 0.5 s budget by step 2 if it counted
    slow = [{"name": "doubles:BrightnessCritic", "delay": 0.3}]
    run_dir = run_recipe(write_recipe(tmp_path, evaluate=slow, run={"seed": 0, "output_dir": str(tmp_path / "runs"),
                                                                     "budget": {"seconds": 0.5}}), progress=False)
    (r,) = RunRecord(run_dir).results()
    assert r["steps"] == 5 and len(r["curve"]) == 5
    assert r["budget"]["seconds"] < 0.5 < r["seconds"]


def test_curves_are_drawn_when_every_held_out_score_is_null(tmp_path):
    """A run whose held-out critic returned only non-finite scores (written as null) still gets
    its curves.png and hacking report instead of a crash at summary time."""
    from milr.diagnostics import hacking_report, write_curves

    results = [_result("counting", 0.1, 0.9, None, None), _result("position", 0.2, 0.4, None, None)]
    path = write_curves(tmp_path, results)
    assert path is not None and path.stat().st_size > 0
    assert "counting" in hacking_report(results)


def test_held_out_critics_that_cost_money_are_not_scored_per_step(tmp_path, monkeypatch):
    """An evaluate critic whose card says cost "api" (a paid judge) scores only the initial and
    final images: the per-step curve leaves it out, so curves never multiply API spend."""
    import milr.runner as runner

    monkeypatch.setattr(runner, "_card_cost", lambda name: "api" if name == "doubles:RednessCritic" else None)
    run_dir = run_recipe(write_recipe(tmp_path), progress=False)
    (r,) = RunRecord(run_dir).results()
    assert all(e["eval"] == {} for e in r["curve"])
    assert r["initial"]["eval"]["doubles:RednessCritic"] == pytest.approx(TRUTH[0], abs=1e-6)
    assert r["final"]["eval"]["doubles:RednessCritic"] == pytest.approx(TRUTH[4], abs=1e-6)
