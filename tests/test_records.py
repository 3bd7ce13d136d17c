"""The typed run-record schema (milr/run_record.py): written by the runner, read by summaries,
compare, compare-critics, agree and ensembles' reference statistics; old folders load unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from milr.errors import RunFolderError
from milr.records import RunRecord, _json_default, strict_json
from milr.run_record import BudgetRecord, PromptRecord, SideRecord, read_records
from milr.runner import run_recipe

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent


def line_of(record: PromptRecord) -> str:
    """The bytes RunRecord.append writes for a record."""
    return json.dumps(strict_json(record.to_json()), default=_json_default, allow_nan=False)


def toy_run(tmp_path: Path) -> Path:
    return run_recipe({
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "toy_mug:TargetTokenCritic"}],
        "evaluate": [{"name": "doubles:BrightnessCritic"}],
        "search": {"name": "best_of_n", "n": 2},
        "prompts": {"inline": ["one toy prompt", "another toy prompt"]},
        "run": {"seed": 1, "output_dir": str(tmp_path / "runs")},
    }, progress=False, log=lambda s: None)


def edit_line(run_dir: Path, n: int, change) -> None:
    path = run_dir / "results.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[n - 1])
    change(rec)
    lines[n - 1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


def test_committed_run_folders_round_trip_byte_for_byte():
    folders = sorted(p.parent for p in (ROOT / "docs" / "results").rglob("results.jsonl"))
    assert folders, "docs/results holds the run records behind the README's figures"
    n = 0
    for folder in folders:
        lines = [s for s in (folder / "results.jsonl").read_text().splitlines() if s.strip()]
        records = read_records(folder)
        assert [line_of(r) for r in records] == lines
        n += len(lines)
    assert n >= 100


def test_the_runner_writes_typed_records(tmp_path):
    run_dir = toy_run(tmp_path)
    records = RunRecord(run_dir).records()
    assert [r.prompt for r in records] == ["one toy prompt", "another toy prompt"]
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert [line_of(r) for r in records] == lines  # what the runner wrote is exactly the schema's JSON
    r = records[0]
    assert isinstance(r.initial, SideRecord) and isinstance(r.budget, BudgetRecord)
    assert set(r.initial.scores) == {"toy_mug:TargetTokenCritic"} and set(r.final.eval) == {"doubles:BrightnessCritic"}
    assert r.initial.step is None and r.final.step is not None and r.budget.critic_calls == 2
    assert RunRecord(run_dir).summarize()["overall"]["n"] == 2


def test_an_unknown_key_is_one_line_naming_file_and_line(tmp_path):
    run_dir = toy_run(tmp_path)
    edit_line(run_dir, 2, lambda r: r.__setitem__("rewardz", 1))
    for read in (lambda: RunRecord(run_dir).results(), lambda: RunRecord(run_dir).records(), lambda: read_records(run_dir)):
        with pytest.raises(RunFolderError, match=r"results\.jsonl line 2: unknown key 'rewardz' in a run record") as e:
            read()
        assert "\n" not in str(e.value)
    # Every reader goes through the schema: ensembles' reference statistics too.
    from milr.critics.normalize import read_run_scores

    with pytest.raises(RunFolderError, match="line 2: unknown key 'rewardz'"):
        read_run_scores(run_dir)
    # The command line: one 'milr: ... error' line, exit 2, no traceback.
    env = {"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", "--resume", str(run_dir)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = [s for s in out.stderr.splitlines() if s.startswith("milr:") and "error" in s]
    assert "results.jsonl line 2: unknown key 'rewardz'" in line


def test_a_nested_unknown_key_or_a_bad_value_is_located(tmp_path):
    run_dir = toy_run(tmp_path)
    edit_line(run_dir, 1, lambda r: r["final"].__setitem__("stpe", 3))
    with pytest.raises(RunFolderError, match=r"line 1: unknown key 'final\.stpe'"):
        read_records(run_dir)
    edit_line(run_dir, 1, lambda r: (r["final"].pop("stpe"), r["initial"].__setitem__("reward", "high")))
    with pytest.raises(RunFolderError, match=r"line 1: initial\.reward must be a number or null, found 'high'"):
        read_records(run_dir)


def test_a_key_a_reader_needs_is_named_when_missing(tmp_path):
    from milr.compare import summarize_runs
    from milr.compare_critics import load_rows

    run_dir = toy_run(tmp_path)
    edit_line(run_dir, 2, lambda r: r.pop("final"))
    for read in (lambda: load_rows(run_dir, None), lambda: summarize_runs({"a": run_dir}, n_resamples=10),
                 lambda: RunRecord(run_dir).summarize()):
        with pytest.raises(RunFolderError, match=r"results\.jsonl line 2: the run record has no 'final'"):
            read()


def test_hand_written_lines_with_fewer_keys_load_and_a_torn_last_line_is_skipped(tmp_path):
    folder = tmp_path / "hand"
    folder.mkdir()
    good = {"id": "a", "prompt": "p", "initial": {"reward": 0.5, "scores": {"c": 0.5}}, "final": {"reward": 0.75}}
    (folder / "results.jsonl").write_text(json.dumps(good) + "\n" + '{"id": "b", "pro')
    (rec,) = read_records(folder)
    assert rec.final.reward == 0.75 and rec.budget is None and rec.tag == "all"
    with pytest.raises(RunFolderError, match="line 2: not JSON"):
        read_records(folder, skip_torn=False)
    (folder / "results.jsonl").write_text('{"id": "b", "pro\n' + json.dumps(good) + "\n")
    with pytest.raises(RunFolderError, match="line 1: not JSON"):
        read_records(folder)  # only the last line can be a killed writer's
