"""Runner and run records: result lines, manifest, images, summary, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from milr.records import RunRecord
from milr.runner import run_recipe

TESTS = Path(__file__).parent
PROMPTS = [f"prompt number {i}" for i in range(8)]


def recipe(tmp_path, delay=0.0, n=2, prompts=PROMPTS, **run):
    data = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "doubles:BrightnessCritic", "delay": delay}],
        "evaluate": [{"name": "toy_mug:TargetTokenCritic"}],
        "search": {"name": "best_of_n", "n": n},
        "prompts": {"inline": prompts},
        "run": {"seed": 3, "output_dir": str(tmp_path / "runs"), **run},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def env_with_tests():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def test_run_writes_records(tmp_path):
    run_dir = run_recipe(recipe(tmp_path, prompts=PROMPTS[:3]), progress=False)
    rec = RunRecord(run_dir)
    manifest = rec.manifest()
    # the given arguments, and every default written down (issue 14: a manifest replays the same run)
    assert {"name": "best_of_n", "n": 2}.items() <= manifest["recipe"]["search"].items()
    assert manifest["recipe"]["search"]["batch_size"] == 8
    assert manifest["seed"] == 3 and "torch" in manifest["versions"] and manifest["device"] == "cpu"
    results = rec.results()
    assert [r["prompt"] for r in results] == PROMPTS[:3]
    for r in results:
        # the final image is the best of the n samples, so it is never worse than the initial one
        assert r["final"]["reward"] >= r["initial"]["reward"]
        assert set(r["initial"]["scores"]) == {"doubles:BrightnessCritic"}
        assert set(r["final"]["eval"]) == {"toy_mug:TargetTokenCritic"}
        assert r["budget"]["critic_calls"] == 2 and r["budget"]["image_tokens"] > 0
        for key in ("initial", "final"):
            assert (run_dir / r["images"][key]).is_file()
    assert (run_dir / "summary.md").read_text().startswith("| tag |")
    from PIL import Image

    grid = Image.open(run_dir / "grid.png")
    assert grid.size[1] == 3 * 128  # one row per prompt


def test_same_seed_same_results(tmp_path):
    a = RunRecord(run_recipe(recipe(tmp_path / "a", prompts=PROMPTS[:2]), progress=False)).results()
    b = RunRecord(run_recipe(recipe(tmp_path / "b", prompts=PROMPTS[:2]), progress=False)).results()
    assert [r["final"]["reward"] for r in a] == [r["final"]["reward"] for r in b]


def test_budget_cap_is_respected(tmp_path):
    run_dir = run_recipe(recipe(tmp_path, n=6, prompts=PROMPTS[:1], budget={"critic_calls": 1}), progress=False)
    (r,) = RunRecord(run_dir).results()
    assert r["budget"]["critic_calls"] <= 6  # one ask of the batch, then the cap stops the loop
    assert r["steps"] == 1


def test_repair_drops_partial_line(tmp_path):
    rec = RunRecord.create(tmp_path, "x")
    rec.write_manifest({}, 0, "cpu")
    rec.append({"id": "a", "steps": 1})
    with open(rec.results_path, "ab") as f:
        f.write(b'{"id": "b", "steps"')  # what a SIGKILL mid-write would leave
    rec2 = RunRecord.open(rec.dir)
    assert [r["id"] for r in rec2.results()] == ["a"]


def test_kill_and_resume_gives_one_line_per_prompt(tmp_path):
    kill_and_resume(tmp_path)


def kill_and_resume(tmp_path, **run):
    """Kill a run after two lines, resume it: one valid line per prompt (also used by test_batching)."""
    path = recipe(tmp_path, delay=0.25, **run)
    cmd = [sys.executable, "-m", "milr.cli", "run", str(path)]
    proc = subprocess.Popen(cmd, env=env_with_tests(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = tmp_path / "runs"
    deadline = time.time() + 90
    results = None
    while time.time() < deadline:
        found = list(runs.glob("*/results.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            results = found[0]
            break
        if proc.poll() is not None:
            pytest.fail("run finished before it could be killed: " + proc.stderr.read().decode()[-2000:])
        time.sleep(0.05)
    assert results is not None, "no results appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines_at_kill = len(results.read_text().splitlines())
    assert lines_at_kill < len(PROMPTS)
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", "--resume", str(results.parent)],
                         env=env_with_tests(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = results.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # no corrupt line
    assert len(parsed) == len(PROMPTS)
    assert sorted(r["id"] for r in parsed) == sorted({r["id"] for r in parsed})
    assert {r["prompt"] for r in parsed} == set(PROMPTS)
    assert f"{len(PROMPTS) - lines_at_kill} of {len(PROMPTS)} prompts to do" in out.stderr


def test_resume_of_finished_run_does_nothing(tmp_path):
    run_dir = run_recipe(recipe(tmp_path, prompts=PROMPTS[:2]), progress=False)
    before = (run_dir / "results.jsonl").read_text()
    run_recipe(None, resume=run_dir, progress=False)
    assert (run_dir / "results.jsonl").read_text() == before


def test_cli_dry_run_loads_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", str(recipe(tmp_path)), "--dry-run", "--allow-imports", "search.n=3"],
                         env=env_with_tests(), capture_output=True, text=True, check=True)
    assert "n: 3" in out.stdout and "8 prompts" in out.stdout
    assert not (tmp_path / "runs").exists()


def test_cli_reports_recipe_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", str(recipe(tmp_path)), "search.n=ten"],
                         env=env_with_tests(), capture_output=True, text=True)
    assert out.returncode == 2
    assert "search.n: expected an integer, found 'ten'" in out.stderr


def test_cli_show(tmp_path):
    out = subprocess.run([sys.executable, "-m", "milr.cli", "show", str(recipe(tmp_path)), "--allow-imports", "run.seed=11"],
                         env=env_with_tests(), capture_output=True, text=True, check=True)
    shown = yaml.safe_load(out.stdout)
    assert shown["run"]["seed"] == 11 and shown["search"]["name"] == "best_of_n"
