"""Static shards (``milr run --shard K/N``) and ``milr merge``: shards + merge = the unsharded run."""

import json
import shutil

import pytest

from milr.errors import RunFolderError, UserError
from milr.executors.shards import Shard, merge_runs, parse_shard
from milr.records import RunRecord
from milr.runner import run_recipe
from test_runner import PROMPTS, recipe

def _timeless(o):
    """``o`` without wall-clock fields (``seconds`` at any depth: the line's, its budget's, its trace's)."""
    if isinstance(o, dict):
        return {k: _timeless(v) for k, v in o.items() if k != "seconds"}
    if isinstance(o, list):
        return [_timeless(v) for v in o]
    return o


def comparable(results: list[dict]) -> list[dict]:
    """Result lines less what depends on when and where a prompt ran (timings, image paths)."""
    return [_timeless({k: v for k, v in r.items() if k != "images"}) for r in results]


def test_parse_shard():
    assert parse_shard("1/3") == Shard(1, 3)
    for bad in ("2/2", "x", "-1/2", "1/0", "0/2/3", ""):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """The unsharded run, then shards 0/2 and 1/2 of the same recipe (5 prompts: shards of 3 and 2)."""
    tmp = tmp_path_factory.mktemp("shards")
    path = recipe(tmp, prompts=PROMPTS[:5])
    whole = run_recipe(path, progress=False)
    parts = [run_recipe(path, progress=False, shard=Shard(k, 2)) for k in range(2)]
    return tmp, whole, parts


def test_shards_plus_merge_equal_the_unsharded_run(three_runs):
    tmp, whole, parts = three_runs
    for k, part in enumerate(parts):
        m = RunRecord(part).manifest()
        assert m["shard"] == {"index": k, "count": 2, "prompts": 3 - k} and m["prompts"] == 5
        assert [r["index"] for r in RunRecord(part).results()] == list(range(k, 5, 2))
    merged = merge_runs(parts[::-1], tmp / "merged", log=lambda s: None)  # order given does not matter
    got, want = RunRecord(merged).results(), RunRecord(whole).results()
    assert [r["index"] for r in got] == list(range(5))
    assert comparable(got) == comparable(want)
    for r in got:
        for key in ("initial", "final"):
            assert (merged / r["images"][key]).read_bytes() == (whole / r["images"][key]).read_bytes()
    manifest = RunRecord(merged).manifest()
    assert "shard" not in manifest and [m["shard"]["index"] for m in manifest["merged_from"]] == [1, 0]
    assert json.loads((merged / "summary.json").read_text())["overall"]["n"] == 5


def test_merge_refuses_missing_doubled_and_foreign(three_runs, tmp_path):
    tmp, whole, parts = three_runs
    with pytest.raises(RunFolderError, match=r"shard\(s\) 1/2 not given"):
        merge_runs(parts[:1], tmp_path / "a", log=lambda s: None)
    with pytest.raises(RunFolderError, match="not a shard"):
        merge_runs([whole, *parts], tmp_path / "b", log=lambda s: None)
    with pytest.raises(UserError, match="given twice"):
        merge_runs([parts[0], parts[0], parts[1]], tmp_path / "c", log=lambda s: None)
    # A shard that lost a line (killed before its last prompt): the missing prompt is named.
    cut = tmp_path / "cut"
    shutil.copytree(parts[1], cut)
    lines = (cut / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(RunFolderError, match="1 of 5 prompts have no line .*indices 3"):
        merge_runs([parts[0], cut], tmp_path / "d", log=lambda s: None)
    # A doubled line.
    (cut / "results.jsonl").write_text("".join(lines + lines[-1:]))
    with pytest.raises(RunFolderError, match="each prompt must be recorded once"):
        merge_runs([parts[0], cut], tmp_path / "e", log=lambda s: None)
    # A shard of another recipe (different critics).
    (cut / "results.jsonl").write_text("".join(lines))
    m = json.loads((cut / "manifest.json").read_text())
    m["recipe"]["critics"][0]["delay"] = 0.5
    (cut / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunFolderError, match="critics differ"):
        merge_runs([parts[0], cut], tmp_path / "f", log=lambda s: None)
    assert not any((tmp_path / x).exists() for x in "abcdef")


def test_cli_shard_and_merge(tmp_path, capsys):
    from milr.cli import main

    path = recipe(tmp_path, prompts=PROMPTS[:3])
    assert main(["run", str(path), "--shard", "2/2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "K must be between 0 and 1" in err
    assert main(["run", str(path), "--shard", "0/2", "--dry-run", "--allow-imports"]) == 0
    assert "2 prompts (shard 0/2)" in capsys.readouterr().out
    runs = []
    for k in range(2):
        assert main(["run", str(path), "--shard", f"{k}/2"]) == 0
        runs.append(capsys.readouterr().out.strip())
    assert main(["merge", *runs, "--out", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert [r["prompt"] for r in RunRecord(tmp_path / "m").results()] == PROMPTS[:3]
    assert main(["merge", *runs, "--out", str(tmp_path / "m")]) == 2  # not empty: never overwritten
    assert "exists and is not empty" in capsys.readouterr().err


def test_resume_keeps_the_shard(three_runs, tmp_path):
    _, _, parts = three_runs
    cut = tmp_path / "cut"
    shutil.copytree(parts[0], cut)
    lines = (cut / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:1]))  # killed after its first prompt
    logged = []
    run_recipe(None, resume=cut, progress=False, log=logged.append)
    assert "(2 of 3 prompts to do)" in logged[0]
    assert [r["index"] for r in RunRecord(cut).results()] == [0, 2, 4]
