"""One config system (issue 14): the failures its "Why" lists are one-line errors naming the key
(exit 2, no traceback, no run folder) or work; one merge rule for extends and overrides; registry
tags are presets; defaults written into show and manifest.json replay the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from milr.cli import main
from milr.recipe import load_recipe
from milr.records import RunRecord
from milr.registry import SEARCHES
from milr.runner import run_recipe

TESTS = Path(__file__).parent


def cli(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """Run ``milr`` in-process: (exit code, stdout, stderr lines)."""
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()]


def one_line_error(rc: int, lines: list[str], key: str) -> str:
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("milr: ") and " error: " in lines[0], lines
    assert key in lines[0] and "Traceback" not in lines[0], lines
    return lines[0]


def child(tmp_path: Path, **over) -> Path:
    p = tmp_path / "child.yaml"
    p.write_text(yaml.safe_dump({"extends": "quickstart", **over}))
    return p


# -- the failures listed under "Why" -------------------------------------------------------------
RUN_ERRORS = [
    (["combine.mode=summ", "critics=[{name: world_oracle}, {name: world_pref}]"], "combine.mode"),
    (["evaluate.0.mode=binry"], "evaluate.0.mode"),
    (["evaluate.0.mode=dense"], "evaluate.0.mode"),  # world_oracle mode: dense
    (["search.name=best_of_n", "search.prefilter_k=2", "search.prefilter_critic=world_orcle"], "search.prefilter_critic"),
    (["critics.0={name: ensemble, members: [{name: world_oracle}, {name: world_orcle}]}"], "critics.0.members.1.name"),
    (["critics.0={name: ensemble, mode: summ, members: [{name: world_oracle}]}"], "critics.0.mode"),
    (["search.name=reinforce.bogus"], "search.name"),
    (["search.name=best_of_n", "search.prefilter_k=2", "search.prefilter_critic=trained"], "search.prefilter_critic"),
    (["critics=[{name: world_oracle}, {name: world_pref}]", "combine={cascade: {cheap: world_pre, keep_top: 2}}"],
     "combine.cascade.cheap"),  # a misspelt cascade member
]


@pytest.mark.parametrize("overrides,key", RUN_ERRORS)
def test_why_failures_are_one_line_before_any_folder(tmp_path, capsys, overrides, key):
    out = tmp_path / "runs"
    for argv in (["show", "quickstart"], ["run", "quickstart", "--dry-run"], ["run", "quickstart"]):
        rc, _, lines = cli(capsys, *argv, f"run.output_dir={out}", *overrides)
        one_line_error(rc, lines, key)
    assert not out.exists()


def test_compare_checks_overrides_and_search_specs_before_any_folder(tmp_path, capsys):
    out = tmp_path / "cmp"
    for extra in (["--searches", "reinforce.faithfull(steps=2)"], ["--searches", "best_of_n", "search.stepz=1"],
                  ["--searches", "best_of_n(n=two)"]):
        rc, _, lines = cli(capsys, "compare", "quickstart", *extra, "--out", str(out))
        one_line_error(rc, lines, "search")
    assert not out.exists()


def test_unknown_tag_has_did_you_mean(capsys):
    rc, _, lines = cli(capsys, "show", "quickstart", "search.name=reinforce.faithfull")
    line = one_line_error(rc, lines, "search.name")
    assert "unknown tag 'faithfull'" in line and "did you mean 'reinforce.faithful'" in line


def test_train_minimug_takes_validated_overrides(tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc, _, lines = cli(capsys, "train", "minimug", "train-minimug-smoke", "trainer.max_stepz=3", "--out", str(out))
    assert "did you mean 'trainer.max_steps'" in one_line_error(rc, lines, "trainer.max_stepz")
    rc, _, lines = cli(capsys, "train", "minimug", "train-minimug-smoke", "train.stepz=3", "--out", str(out))
    one_line_error(rc, lines, "train")
    rc, _, lines = cli(capsys, "train", "minimug", "train-minimug-smoke", "data.batch_size=0", "--out", str(out))
    one_line_error(rc, lines, "data.batch_size")
    assert not out.exists()


def test_train_detector_and_train_critic_share_the_loader(tmp_path, capsys):
    rc, _, lines = cli(capsys, "train-critic", "train-world-pref-smoke", f"output={tmp_path / 'o'}", "train.epochz=1")
    assert "did you mean 'train.epochs'" in one_line_error(rc, lines, "train.epochz")
    rc, _, lines = cli(capsys, "train-detector", "train-world-detector-smoke", "train.epochz=1")
    assert "did you mean 'epochs'" in one_line_error(rc, lines, "train.epochz")
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"task": "distill", "output": str(tmp_path / "o"), "extends": "distill-world-ensemble"}))
    rc, _, lines = cli(capsys, "train-critic", str(rec), "distill.teacher.critics.0.batch_sise=4")
    assert "did you mean 'batch_size'" in one_line_error(rc, lines, "distill.teacher.critics.0.batch_sise")
    assert not (tmp_path / "o").exists()


# -- one merge rule: extends and overrides switch components the same way -----------------------
def _shown(capsys, *argv: str) -> dict:
    rc, out, lines = cli(capsys, "show", *argv)
    assert rc == 0, lines
    return yaml.safe_load(out)


def test_child_recipe_switches_the_search(tmp_path, capsys):
    path = child(tmp_path, search={"name": "best_of_n", "n": 3})
    rc, out, lines = cli(capsys, "run", str(path), "--dry-run", f"run.output_dir={tmp_path / 'runs'}")
    assert rc == 0, lines
    search = _shown(capsys, str(path))["search"]
    own = {k for k in SEARCHES.get("best_of_n").__init__.__code__.co_varnames if k != "self"}
    assert search["name"] == "best_of_n" and search["n"] == 3
    assert set(search) - {"name"} <= own and "mode" not in search and "steps" not in search  # its own defaults only
    assert search["batch_size"] == 8  # a default of best_of_n, written down
    # the same switch as an override
    assert _shown(capsys, "quickstart", "search.name=best_of_n", "search.n=3")["search"] == search
    assert _shown(capsys, "quickstart", "search={name: best_of_n, n: 3}")["search"] == search


def test_child_recipe_switches_the_prompt_source(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a photo of a red circle\n")
    path = child(tmp_path, prompts={"file": "p.txt"}, evaluate=[])
    rc, out, lines = cli(capsys, "run", str(path), "--dry-run", f"run.output_dir={tmp_path / 'runs'}")
    assert rc == 0 and "1 prompts" in out, lines
    prompts = _shown(capsys, str(path))["prompts"]
    assert "suite" not in prompts and prompts["file"].endswith("p.txt") and prompts["per_tag"] == 2
    over = _shown(capsys, "quickstart", f"prompts.file={tmp_path / 'p.txt'}", "evaluate=[]")["prompts"]
    assert over == prompts


def test_same_component_merges_arguments(tmp_path):
    r = load_recipe(child(tmp_path, search={"name": "reinforce", "steps": 3}))
    assert r.search.args["steps"] == 3 and r.search.args["mode"] == "both" and r.search.args["threshold"] == 0.99
    # a tag keeps the parent's arguments (a preset of the same class) and adds its own
    r = load_recipe("quickstart", ["search.name=reinforce.faithful"])
    assert r.to_dict()["search"]["preset"] == "faithful" and r.search.args["steps"] == 20
    assert load_recipe("quickstart", ["run.name=x"]).run.output_dir == "runs"  # run.name is not a component name


def test_training_recipes_follow_the_same_rule(tmp_path):
    from milr.models.minimug.train_config import load_config
    from milr.training.config import load_train_recipe

    rec = tmp_path / "student.yaml"
    rec.write_text(yaml.safe_dump({"extends": "distill-world-ensemble", "output": str(tmp_path / "o"),
                                   "distill": {"teacher": {"name": "world_oracle", "mode": "partial"}}}))
    assert load_train_recipe(rec)["distill"]["teacher"] == {"name": "world_oracle", "mode": "partial"}  # switched, not merged
    assert load_train_recipe(rec, ["distill.teacher.mode=binary"])["distill"]["teacher"]["mode"] == "binary"
    assert load_config("train-minimug-smoke", ["trainer.max_steps=3"])["trainer"]["max_steps"] == 3


def test_tags_are_presets_built_and_listed(capsys):
    assert SEARCHES.build("reinforce.faithful", steps=2).preset == "faithful"
    rc, out, _ = cli(capsys, "list", "models")
    assert rc == 0 and "janus_pro.1b (checkpoint=deepseek-community/Janus-Pro-1B)" in out


# -- defaults written down: a manifest replays the same run after a default changes ---------------
def test_manifest_replays_defaults_after_they_change(tmp_path, monkeypatch):
    data = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "toy_mug:TargetTokenCritic"}],
        "search": {"name": "best_of_n", "n": 2},
        "prompts": {"inline": ["p one"]},
        "run": {"seed": 1, "output_dir": str(tmp_path / "runs")},
    }
    run_dir = run_recipe(data, progress=False)
    saved = RunRecord(run_dir).manifest()["recipe"]
    assert saved["search"]["batch_size"] == 8
    BestOfN = SEARCHES.get("best_of_n")
    defaults = list(BestOfN.__init__.__defaults__)
    names = BestOfN.__init__.__code__.co_varnames[1: BestOfN.__init__.__code__.co_argcount]
    defaults[names.index("batch_size") - (len(names) - len(defaults))] = 3
    monkeypatch.setattr(BestOfN.__init__, "__defaults__", tuple(defaults))
    assert load_recipe(data).to_dict()["search"]["batch_size"] == 3  # the code's new default
    replay = load_recipe(json.loads(json.dumps(saved)))
    assert replay.search.args["batch_size"] == 8  # what the run used, passed explicitly
    built = SEARCHES.get(replay.search.name)(**replay.search.args)
    assert built.batch_size == 8


# -- milr list stays light ----------------------------------------------------------------------
def test_list_imports_neither_torch_nor_pydantic():
    code = ("import sys, io, contextlib\nfrom milr.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['list'])\n"
            "print(sorted(m for m in ('torch', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
