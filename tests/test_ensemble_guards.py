"""Ensembles that resist reward hacking (issue 11, item 3): the agreement gate, the lower-confidence
bound, and normalisation from a reference set (run folder or `milr calibrate` stats), never from
the first image.

The constructed case: three members on one scale -- two honest ones (``a``, ``b``) that prefer the
good image G, and a hackable one (``h``) that gives the bad image X a huge score. The plain sum
picks X; each guard must pick G. Expected numbers are computed by hand from the definitions.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from milr.critics.ensemble import Ensemble
from milr.critics.ensemble_config import validate_combine
from milr.calibrate import calibrate
from milr.critics.normalize import CriticStats, read_run_scores, read_stats_file, reference_stats, run_stats
from milr.interfaces import Critic
from milr.recipe import RecipeError, load_recipe
from milr.records import RunRecord
from milr.runner import run_recipe

# Image ids -> member scores.   a (honest)  b (honest)  h (hackable)
INCUMBENT, GOOD, BAD, GOOD2 = 0, 1, 2, 3
TABLE = {
    "a": {INCUMBENT: 0.5, GOOD: 0.8, BAD: 0.3, GOOD2: 0.9},
    "b": {INCUMBENT: 0.5, GOOD: 0.7, BAD: 0.2, GOOD2: 0.75},
    "h": {INCUMBENT: 0.5, GOOD: 0.1, BAD: 5.0, GOOD2: 0.05},
}


class LookupCritic(Critic):
    """Score = a table entry for the image id written in pixel (0, 0, 0) as id / 10."""

    def __init__(self, table: dict[int, float]):
        self.table = table
        self.init_args = {"table": sorted(table.items())}

    def score(self, images, prompts, metadata=None):
        ids = (images[:, 0, 0, 0] * 10).round().long().tolist()
        return torch.tensor([self.table[i] for i in ids], dtype=torch.float32)


def imgs(*ids: int) -> torch.Tensor:
    x = torch.zeros(len(ids), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32) / 10
    return x


def members():
    return [LookupCritic(TABLE[n]) for n in ("a", "b", "h")]


def ens(**combine) -> Ensemble:
    return Ensemble(members(), names=["a", "b", "h"], **combine)


def loo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE's leave-one-out baseline (search/reinforce.py): r_j - mean of the others."""
    k = rewards.numel()
    return rewards - (rewards.sum() - rewards) / (k - 1)


def test_plain_sum_is_hacked():
    r = ens(mode="sum").score(imgs(GOOD, BAD), ["p"] * 2, [{}] * 2)
    # G: 0.8 + 0.7 + 0.1 = 1.6;  X: 0.3 + 0.2 + 5.0 = 5.5
    assert r.tolist() == pytest.approx([1.6, 5.5])
    assert int(r.argmax()) == 1
    assert loo_advantages(r)[1] > 0 > loo_advantages(r)[0]


# ---------------------------------------------------------------------------------------------
# Agreement gate
# ---------------------------------------------------------------------------------------------
def test_gate_caps_a_candidate_only_the_hackable_member_prefers():
    e = ens(mode="sum", gate={"k": 2})
    # First image of the prompt: the incumbent I, reward 0.5 * 3 = 1.5, passes unchanged.
    assert e.score(imgs(INCUMBENT), ["p"], [{}]).tolist() == pytest.approx([1.5])
    r = e.score(imgs(GOOD, BAD), ["p"] * 2, [{}] * 2)
    # G = 1.6 > 1.5 and a (0.8 > 0.5), b (0.7 > 0.5) agree: 2 >= k, kept at 1.6.
    # X = 5.5 > 1.5 but only h (5.0 > 0.5) agrees: 1 < k, capped at the incumbent's 1.5.
    assert r.tolist() == pytest.approx([1.6, 1.5])
    assert e.last_accepted.tolist() == [True, False]
    assert int(r.argmax()) == 0  # best-of-N's argmax picks G
    adv = loo_advantages(r)  # +0.1 for G, -0.1 for X
    assert adv.tolist() == pytest.approx([0.1, -0.1], abs=1e-6)
    # G became the incumbent (1.6; a 0.8, b 0.7, h 0.1): X is now capped at 1.6, and G2 (a and b
    # higher again: 0.9 > 0.8, 0.75 > 0.7; sum 1.7) is accepted.
    r = e.score(imgs(BAD, GOOD2), ["p"] * 2, [{}] * 2)
    assert r.tolist() == pytest.approx([1.6, 1.7])


def test_gate_k_and_margin_and_penalty_follow_the_definition():
    # k = 1: one agreeing member suffices, so X keeps its 5.5 (the gate is only as strong as k).
    e = ens(mode="sum", gate={"k": 1})
    e.score(imgs(INCUMBENT), ["p"], [{}])
    assert e.score(imgs(GOOD, BAD), ["p"] * 2, [{}] * 2).tolist() == pytest.approx([1.6, 5.5])
    # margin 0.25: a agrees with G (0.8 - 0.5 = 0.3 >= 0.25), b does not (0.2 < 0.25): G is capped.
    e = ens(mode="sum", gate={"k": 2, "margin": 0.25, "penalty": 0.5})
    e.score(imgs(INCUMBENT), ["p"], [{}])
    r = e.score(imgs(GOOD, BAD), ["p"] * 2, [{}] * 2)
    assert r.tolist() == pytest.approx([1.5 - 0.5, 1.5 - 0.5])  # both capped at incumbent - penalty
    assert e.gate.last_agree.tolist() == [1, 1]


def test_gate_first_batch_row_zero_is_the_incumbent_and_prompts_reset():
    e = ens(mode="sum", gate={"k": 2})
    # One call with I first: I is the incumbent, G and X are compared with it (not with each other).
    r = e.score(imgs(INCUMBENT, GOOD, BAD), ["p"] * 3, [{}] * 3)
    assert r.tolist() == pytest.approx([1.5, 1.6, 1.5])
    assert int(r.argmax()) == 1
    # A new prompt starts fresh: X is its first image, hence its incumbent, unchanged.
    assert e.score(imgs(BAD), ["q"], [{}]).tolist() == pytest.approx([5.5])
    # Back to "p": its state was dropped when "q" came, so G is the first image again.
    assert e.score(imgs(GOOD), ["p"], [{}]).tolist() == pytest.approx([1.6])
    # The key includes metadata: same text, other metadata, other incumbent.
    r = e.score(imgs(BAD, BAD), ["p", "p"], [{"tag": "colors"}, {}])
    assert r.tolist() == pytest.approx([5.5, 1.6])  # first of its key / capped at G's 1.6
    e.reset()
    assert e.score(imgs(BAD), ["p"], [{}]).tolist() == pytest.approx([5.5])


def test_gate_votes_only_members_with_weight_on_the_prompt():
    # Tag gate sets b's weight to 0 on colour prompts: only a and h vote, so k=2 needs both.
    e = ens(mode="sum", gate={"k": 2}, gates={"colors": {"b": 0.0}})
    md = [{"tag": "colors"}]
    e.score(imgs(INCUMBENT), ["p"], md)  # incumbent reward 0.5 + 0.5 = 1.0
    # G: 0.8 + 0.1 = 0.9 <= 1.0, not better: unchanged. X: 0.3 + 5.0 = 5.3 > 1.0, only h agrees: capped.
    assert e.score(imgs(GOOD, BAD), ["p"] * 2, md * 2).tolist() == pytest.approx([0.9, 1.0])
    with pytest.raises(ValueError, match="gate.k"):
        ens(mode="sum", gate={"k": 3}, gates={"colors": {"b": 0.0}})


# ---------------------------------------------------------------------------------------------
# Lower-confidence bound
# ---------------------------------------------------------------------------------------------
def test_lcb_discounts_the_score_only_one_member_believes():
    r = ens(mode="lcb").score(imgs(GOOD, BAD), ["p"] * 2, [{}] * 2)
    # G: mean (0.8 + 0.7 + 0.1) / 3 = 0.533333; deviations 0.266667, 0.166667, -0.433333;
    #    variance (0.071111 + 0.027778 + 0.187778) / 3 = 0.095556; std 0.309121; lcb 0.224212.
    # X: mean (0.3 + 0.2 + 5.0) / 3 = 1.833333; deviations -1.533333, -1.633333, 3.166667;
    #    variance (2.351111 + 2.667778 + 10.027778) / 3 = 5.015556; std 2.239543; lcb -0.406210.
    assert r.tolist() == pytest.approx([0.224212, -0.406210], abs=1e-5)
    assert int(r.argmax()) == 0
    assert loo_advantages(r)[0] > 0 > loo_advantages(r)[1]
    # kappa = 0 is the plain mean (X wins again); kappa = 0.5 halves the discount.
    assert ens(mode="lcb", kappa=0.0).score(imgs(GOOD, BAD), ["p"] * 2, [{}] * 2).tolist() == pytest.approx([0.533333, 1.833333], abs=1e-5)
    assert ens(mode="lcb", kappa=0.5).score(imgs(GOOD), ["p"], [{}]).tolist() == pytest.approx([0.533333 - 0.154561], abs=1e-5)


def test_lcb_weights_are_a_weighted_mean_and_std():
    # Weights 2, 1, 1 -> p = 0.5, 0.25, 0.25. G: m = 0.4 + 0.175 + 0.025 = 0.6;
    # var = 0.5 * 0.04 + 0.25 * 0.01 + 0.25 * 0.25 = 0.085; std 0.291548; lcb 0.308452.
    e = Ensemble(members(), names=["a", "b", "h"], weights=[2.0, 1.0, 1.0], mode="lcb")
    assert e.score(imgs(GOOD), ["p"], [{}]).tolist() == pytest.approx([0.308452], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Reference statistics
# ---------------------------------------------------------------------------------------------
def write_run(folder, rows, torn=True):
    """A run folder by hand: results.jsonl with initial/final per-critic scores."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"index": i, "id": f"t{i}", "prompt": f"p{i}", "metadata": {},
                         "initial": {"reward": 0.0, "scores": ini}, "final": {"reward": 0.0, "scores": fin}})
             for i, (ini, fin) in enumerate(rows)]
    text = "\n".join(lines) + "\n" + ('{"index": 99, "initial": {"sco' if torn else "")
    (folder / "results.jsonl").write_text(text)
    return folder


def test_stats_from_a_run_folder_are_the_initial_scores_mean_and_std(tmp_path):
    run = write_run(tmp_path / "run", [({"a": 1.0, "b": 10.0}, {"a": 100.0, "b": 0.0}),
                                       ({"a": 2.0, "b": 10.0}, {"a": 100.0, "b": 0.0}),
                                       ({"a": 3.0}, {"a": 100.0}),
                                       ({"a": 4.0, "b": float("nan")}, {"a": 100.0})])
    assert [r.initial for r in read_run_scores(run)][2] == {"a": 3.0}  # the torn line is skipped
    st = run_stats(run)
    # a: mean (1+2+3+4)/4 = 2.5; population variance (2.25+0.25+0.25+2.25)/4 = 1.25; std 1.118034.
    assert (st["a"].n, st["a"].mean, st["a"].std) == (4, 2.5, pytest.approx(1.118034, abs=1e-6))
    assert st["a"].quantiles["0.5"] == pytest.approx(2.5) and st["a"].values == (1.0, 2.0, 3.0, 4.0)
    assert (st["b"].n, st["b"].mean, st["b"].std) == (2, 10.0, 0.0)  # NaN dropped, final ignored
    # An ensemble normalises with them: (s - 2.5) / 1.118034.
    e = Ensemble([LookupCritic({0: 5.0})], names=["a"], normalize={"a": {"type": "zscore", "reference": str(run)}})
    assert e.score(imgs(0), ["p"], [{}]).tolist() == pytest.approx([(5.0 - 2.5) / 1.118034], abs=1e-5)
    # rank: 5.0 is above all four reference scores -> CDF 1.0; 2.0 ties one -> (1 + 0.5) / 4.
    r = Ensemble([LookupCritic({0: 5.0, 1: 2.0})], names=["a"], normalize={"type": "rank", "reference": str(run)})
    assert r.score(imgs(0, 1), ["p"] * 2, [{}] * 2).tolist() == pytest.approx([1.0, 0.375])
    with pytest.raises(ValueError, match="no scores of critic 'c'"):
        reference_stats(run, "c")


def test_stats_file_round_trip_and_moments_only(tmp_path):
    from milr.critics.normalize import write_stats

    st = CriticStats.from_scores([1.0, 2.0, 3.0, 4.0])
    for name in ("s.json", "s.yaml"):
        assert read_stats_file(write_stats({"a": st}, tmp_path / name))["a"] == st
    (tmp_path / "m.json").write_text(json.dumps({"critics": {"a": {"n": 3, "mean": 1.0, "std": 2.0}}}))
    z = Ensemble([LookupCritic({0: 5.0})], names=["a"], normalize={"a": {"type": "zscore", "reference": str(tmp_path / "m.json")}})
    assert z.score(imgs(0), ["p"], [{}]).tolist() == pytest.approx([2.0])  # (5 - 1) / 2
    problems = validate_combine({"normalize": {"a": {"type": "rank", "reference": str(tmp_path / "m.json")}}}, ["a"])
    assert problems and "moments only" in problems[0][1]


# ---------------------------------------------------------------------------------------------
# Recipe validation
# ---------------------------------------------------------------------------------------------
def toy_recipe(tmp_path, combine=None, search=None, prompts=("a toy prompt", "another toy prompt")):
    data = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "doubles:BrightnessCritic"},
                    {"name": "toy_mug:TargetTokenCritic", "target": 1},
                    {"name": "toy_mug:TargetTokenCritic", "target": 2}],
        "search": search or {"name": "best_of_n", "n": 4},
        "prompts": {"inline": list(prompts)},
        "run": {"seed": 0, "output_dir": str(tmp_path / "runs")},
    }
    if combine is not None:
        data["combine"] = combine
    return data


@pytest.mark.parametrize("combine, path, words", [
    ({"normalize": "zscore"}, "combine.normalize", "needs a reference"),
    ({"normalize": {"doubles:BrightnessCritic": "rank"}}, "combine.normalize.doubles:BrightnessCritic", "needs a reference"),
    ({"normalize": {"doubles:BrightnessCritic": {"type": "zscore", "reference": "missing.json"}}},
     "combine.normalize.doubles:BrightnessCritic.reference", "not found"),
    ({"normalize": "rank", "reference": "."}, "combine.reference", "holds neither recorded scores"),
    ({"normalize": "rank", "reference": 3}, "combine.reference", "expected a path"),
    ({"mode": "lcb", "kappa": -1}, "combine.kappa", "greater than or equal to 0"),
    ({"mode": "sum", "kappa": 1}, "combine.kappa", "only with mode 'lcb'"),
    ({"mode": "mean"}, "combine.mode", "allowed"),
    ({"gate": {"k": 4}}, "combine.gate.k", "at most the 3 members"),
    ({"gate": {"k": 0}}, "combine.gate.k", "greater than or equal to 1"),
    ({"gate": {"k": 2, "margn": 0.1}}, "combine.gate.margn", "allowed: k, margin, penalty"),
    ({"gate": {"k": 2, "margin": -0.1}}, "combine.gate.margin", "greater than or equal to 0"),
    ({"normalize": {"nobody": "none"}}, "combine.normalize.nobody", "unknown members"),
    ({"weights": [1, 2]}, "combine.weights", "unknown key"),
])
def test_combine_errors_name_the_key_before_anything_loads(tmp_path, combine, path, words):
    from doubles import CountingToyMUG

    before = CountingToyMUG.constructed
    data = toy_recipe(tmp_path, combine)
    data["model"] = {"name": "doubles:CountingToyMUG"}
    with pytest.raises(RecipeError) as info:
        load_recipe(data)
    assert f"{path}: " in str(info.value) and words in str(info.value)
    assert "\n" not in str(info.value)  # one line
    assert CountingToyMUG.constructed == before


def test_reference_path_is_resolved_against_the_recipe_folder(tmp_path):
    from milr.critics.normalize import write_stats

    write_stats({"doubles:BrightnessCritic": CriticStats.from_scores([0.2, 0.4])}, tmp_path / "stats.json")
    data = toy_recipe(tmp_path, {"normalize": {"doubles:BrightnessCritic": {"type": "zscore", "reference": "stats.json"}}})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    r = load_recipe(tmp_path / "r.yaml")
    assert r.combine["normalize"]["doubles:BrightnessCritic"]["reference"] == str((tmp_path / "stats.json").resolve())


# ---------------------------------------------------------------------------------------------
# Through the runner: a real search with each option
# ---------------------------------------------------------------------------------------------
NAMES = ["doubles:BrightnessCritic", "toy_mug:TargetTokenCritic", "toy_mug:TargetTokenCritic#2"]


def results(run_dir):
    return RunRecord(run_dir).results()


@pytest.mark.parametrize("search", [{"name": "best_of_n", "n": 4}, {"name": "reinforce", "steps": 2}])
def test_gate_wires_through_the_runner(tmp_path, search):
    # margin 10 on scores in [0, 1]: no member can ever agree, so no candidate beats the first image.
    gated = run_recipe(toy_recipe(tmp_path / "g", {"mode": "sum", "gate": {"k": 1, "margin": 10.0}}, search), progress=False)
    plain = run_recipe(toy_recipe(tmp_path / "p", {"mode": "sum"}, search), progress=False)
    for r in results(gated):
        assert r["final"]["reward"] == pytest.approx(r["initial"]["reward"])
        assert r["final"]["scores"] == r["initial"]["scores"]  # the initial image is returned
    assert any(r["final"]["reward"] > r["initial"]["reward"] + 1e-6 for r in results(plain))


def test_lcb_wires_through_the_runner(tmp_path):
    run = run_recipe(toy_recipe(tmp_path, {"mode": "lcb", "kappa": 2.0}, {"name": "reinforce", "steps": 2}), progress=False)
    for r in results(run):
        for side in ("initial", "final"):
            s = [r[side]["scores"][n] for n in NAMES]
            m = sum(s) / 3
            std = math.sqrt(sum((x - m) ** 2 for x in s) / 3)
            assert r[side]["reward"] == pytest.approx(m - 2.0 * std, abs=1e-5)


def test_calibrate_then_zscore_from_its_stats(tmp_path):
    out, stats = calibrate(toy_recipe(tmp_path, {"mode": "lcb"}), tmp_path / "stats.json")
    assert set(stats) == set(NAMES)
    run_dir = json.loads(out.read_text())["source"]["run"]
    recorded = [r.initial["doubles:BrightnessCritic"] for r in read_run_scores(run_dir)]
    mean = sum(recorded) / len(recorded)
    assert stats["doubles:BrightnessCritic"].mean == pytest.approx(mean)
    manifest = RunRecord(run_dir).manifest()["recipe"]
    # one image per prompt (the manifest writes down the search's defaults too: issue 14)
    assert manifest["search"] == {"name": "generate", "reasoning": True, "cfg": None, "temperature": None} and "combine" not in manifest
    assert json.loads((tmp_path / "stats.json").read_text())["critics"]["doubles:BrightnessCritic"]["n"] == 2

    # The ensemble-wide reference may be that run folder for a member it did not record: the member
    # scores the folder's images (initial and final: the same image under `generate`) once.
    from doubles import BrightnessCritic

    other = Ensemble([BrightnessCritic(scale=2.0)], names=["bright2"], normalize="zscore", reference=run_dir)
    assert other.stats[0][0] == pytest.approx(2 * mean, abs=1e-2)  # PNG rounding of the saved images

    ref = {"type": "zscore", "reference": str(out)}
    run = run_recipe(toy_recipe(tmp_path / "z", {"mode": "sum", "normalize": {n: ref for n in NAMES[:2]}},
                                {"name": "best_of_n", "n": 3}), progress=False)
    table = read_stats_file(out)
    for r in results(run):
        s = r["initial"]["scores"]
        want = sum((s[n] - table[n].mean) / (table[n].std if table[n].std > 1e-8 else 1.0) for n in NAMES[:2]) + s[NAMES[2]]
        assert r["initial"]["reward"] == pytest.approx(want, abs=1e-4)


def test_milr_calibrate_command(tmp_path, capsys):
    from milr.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe(tmp_path, prompts=("one",))))
    assert main(["calibrate", str(recipe), "--out", str(tmp_path / "s.json"), "run.seed=1"]) == 0
    assert capsys.readouterr().out.strip().endswith("s.json")
    assert set(read_stats_file(tmp_path / "s.json")) == set(NAMES)
    with pytest.raises(SystemExit) as info:
        main(["calibrate", str(recipe)])  # --out is required
    assert info.value.code == 2
