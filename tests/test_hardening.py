"""Hardening (issue 15): one-line user errors, YAML limits, NaN rewards, run-folder locking and resume checks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

from milr.cli import main
from milr.errors import NonFiniteError, RunFolderError
from milr.interfaces import Budget, Critic, Task
from milr.recipe import RecipeError, load_recipe, parse_yaml, preflight
from milr.records import RunRecord
from milr.runner import run_recipe, run_task
from doubles import write_tiny_clip_config
from toy_mug import TargetTokenCritic, ToyMUG

TESTS = Path(__file__).parent


def toy_recipe(tmp_path: Path, **over) -> Path:
    data = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "toy_mug:TargetTokenCritic"}],
        "search": {"name": "best_of_n", "n": 2},
        "prompts": {"inline": ["p one", "p two", "p three"]},
        "run": {"seed": 1, "output_dir": str(tmp_path / "runs")},
    }
    for k, v in over.items():
        data[k] = v
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``milr`` in-process; (exit code, stderr lines)."""
    capsys.readouterr()  # drop what came before
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def assert_clean_error(rc: int, lines: list[str], *needles: str) -> None:
    assert rc == 2, lines
    assert lines and all(line.startswith("milr: ") and " error: " in line for line in lines), lines
    assert not any("Traceback" in line for line in lines)
    for n in needles:
        assert any(n in line for line in lines), (n, lines)


# -- 1. every user error is one line, exit 2, no run folder --------------------------------------------
BAD_OVERRIDES = [
    (["prompts.split=abc"], "prompts.split"),
    (["run.threads=100000"], "run.threads"),
    (["run.seed=18446744073709551616"], "run.seed"),
    (["run.seed=-1"], "run.seed"),
    (["critics.0.weight=nan"], "critics.0.weight"),
    (["critics.0.weight=.inf"], "critics.0.weight"),
    (["evaluate.0.mode=binry"], "evaluate.0.mode"),
    (["model.name=os:no_such_attr"], "model.name"),
    (["model.name=os:system"], "model.name"),
    (["search.steps=-3"], "search"),
    (["run.name=../../escape"], "run.name"),
    (["prompts.limit=0"], "prompts.limit"),
]


@pytest.mark.parametrize("overrides,key", BAD_OVERRIDES)
def test_bad_override_is_one_line_before_any_folder(tmp_path, capsys, overrides, key):
    out = tmp_path / "runs"
    for argv in (["show", "quickstart"], ["run", "quickstart", "--dry-run"], ["run", "quickstart"]):
        rc, lines = cli(capsys, *argv, f"run.output_dir={out}", *overrides)
        assert_clean_error(rc, lines, key)
    assert not out.exists()


def test_validated_values_are_passed_on():
    recipe = load_recipe("quickstart", ["search.lr=1e-3"])
    assert recipe.search.args["lr"] == 0.001 and isinstance(recipe.search.args["lr"], float)


def test_resume_errors_are_messages(tmp_path, capsys):
    rc, lines = cli(capsys, "run", "--resume", str(tmp_path / "nope"))
    assert_clean_error(rc, lines, "no such run folder")
    (tmp_path / "empty").mkdir()
    rc, lines = cli(capsys, "run", "--resume", str(tmp_path / "empty"))
    assert_clean_error(rc, lines, "no manifest.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    rc, lines = cli(capsys, "run", "--resume", str(tmp_path / "bad"))
    assert_clean_error(rc, lines, "damaged manifest")


def test_internal_error_is_one_line_and_traceback_only_with_debug(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "boom_critic.py"
    mod.write_text(textwrap.dedent("""
        from milr.interfaces import Critic
        class Boom(Critic):
            def score(self, images, prompts, metadata):
                raise RuntimeError("kaboom\\nsecond line")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    r = toy_recipe(tmp_path, critics=[{"name": "boom_critic:Boom"}])
    rc, lines = cli(capsys, "run", str(r))
    assert rc == 1 and len(lines) == 2 and lines[-1].startswith("milr: internal error: RuntimeError: kaboom (rerun with --debug")
    rc = main(["run", str(r), "--debug"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err


def test_show_and_dry_run_import_nothing_without_the_flag(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = toy_recipe(tmp_path, model={"name": "side_effect_mod:X"})
    for argv in (["show", str(r)], ["run", str(r), "--dry-run"]):
        rc, lines = cli(capsys, *argv)
        assert_clean_error(rc, lines, "--allow-imports")
    assert not marker.exists()
    rc, lines = cli(capsys, "show", str(r), "--allow-imports")  # imported, then refused: not a MUGModel
    assert_clean_error(rc, lines, "not a subclass of milr.interfaces.MUGModel")
    assert marker.exists()


def test_duplicate_prompt_ids_are_rejected(tmp_path):
    r = toy_recipe(tmp_path, prompts={"inline": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]})
    with pytest.raises(RecipeError, match="prompt id 'a' is used twice"):
        preflight(load_recipe(r))


# -- 2. YAML limits ----------------------------------------------------------------------------------
def test_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmodel: {name: minimug, x: *a9}\n")
    assert bomb.stat().st_size < 1500
    tracemalloc.start()
    t0 = time.perf_counter()
    rc, out = cli(capsys, "show", str(bomb))
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_clean_error(rc, out, "YAML aliases are expanded")
    assert elapsed < 5 and peak < 50e6


@pytest.mark.parametrize("text,needle", [
    ("a: &a [*a]", "refers to itself"),
    ("x: " + "[" * 200 + "]" * 200, "nested deeper"),
    ("x: [unclosed", "not valid YAML"),
    ("!!python/object:os.system {}", "not valid YAML"),
])
def test_yaml_limits(text, needle):
    with pytest.raises(RecipeError, match=needle):
        parse_yaml(text, "f.yaml")


def test_non_utf8_recipe_is_a_message(tmp_path, capsys):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("description: caf\xe9\n".encode("latin-1"))
    rc, lines = cli(capsys, "show", str(p))
    assert_clean_error(rc, lines, "not UTF-8")


# -- 3. NaN and infinity -----------------------------------------------------------------------------
class NaNFirst(Critic):
    """NaN for the first ``bad`` calls, then the target-token reward (so later candidates can win)."""

    def __init__(self, bad: int = 1):
        self.inner, self.bad, self.calls = TargetTokenCritic(), bad, 0

    def score(self, images, prompts, metadata):
        self.calls += 1
        r = self.inner.score(images, prompts, metadata)
        return torch.full_like(r, float("nan")) if self.calls <= self.bad else r


SEARCHES = {
    "reinforce-default": lambda: __import__("milr.search.reinforce", fromlist=["x"]).Reinforce(steps=4),
    "reinforce-faithful": lambda: __import__("milr.search.reinforce", fromlist=["x"]).Reinforce(preset="faithful", steps=4),
    "best_of_n": lambda: __import__("milr.search.best_of_n", fromlist=["x"]).BestOfN(n=6, batch_size=2),
    "cma_es": lambda: __import__("milr.search.cma_es", fromlist=["x"]).CMAES(generations=2, popsize=4),
    "generate": lambda: __import__("milr.search.generate", fromlist=["x"]).PlainGeneration(),
}


@pytest.mark.parametrize("name", list(SEARCHES))
def test_nan_reward_is_an_error_naming_the_critic(name):
    with pytest.raises(NonFiniteError, match="NaNFirst"):
        run_task(SEARCHES[name](), ToyMUG(), NaNFirst(), Task(0, "p", id="p0"), Budget(), 0)


@pytest.mark.parametrize("name", [n for n in SEARCHES if n != "generate"])
def test_nan_reward_skipped_never_freezes_a_search(name):
    initial, best, reward, ledger, steps = run_task(SEARCHES[name](), ToyMUG(), NaNFirst(), Task(0, "p", id="p0"),
                                                    Budget(), 0, on_nonfinite="skip")
    assert math.isnan(initial[1]) and ledger.skipped_nonfinite >= 1
    assert math.isfinite(reward) and not best.info.get("nonfinite") and best is not initial[0]


def test_generate_with_only_nan_rewards_says_so():
    with pytest.raises(NonFiniteError, match="no finite reward"):
        run_task(SEARCHES["generate"](), ToyMUG(), NaNFirst(), Task(0, "p", id="p0"), Budget(), 0, on_nonfinite="skip")


def test_tell_refuses_nan_directly():
    search = SEARCHES["best_of_n"]()
    model = ToyMUG()
    from milr.interfaces import BudgetLedger

    search.setup(model, Task(0, "p"), BudgetLedger(), torch.Generator().manual_seed(0))
    cands = search.ask()
    with pytest.raises(ValueError, match="finite"):
        search.tell(cands, torch.full((len(cands),), float("nan")))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5, -0.2])
def test_critics_reject_bad_images(bad):
    images = torch.rand(2, 3, 8, 8)
    images[1, 0, 0, 0] = bad
    with pytest.raises(NonFiniteError, match="TargetTokenCritic"):
        TargetTokenCritic().score(images, ["p", "p"], [{}, {}])


def test_cache_key_tells_nan_from_black():
    from milr.critics.cache import image_digest

    assert image_digest(torch.full((3, 4, 4), float("nan"))) != image_digest(torch.zeros(3, 4, 4))


def test_skipped_run_writes_strict_json(tmp_path, monkeypatch):
    (tmp_path / "nan_mod.py").write_text(textwrap.dedent("""
        import torch
        from milr.interfaces import Critic
        class FirstNaN(Critic):  # NaN for the first image it ever sees (each prompt's initial image)
            def __init__(self):
                self.seen = 0
            def score(self, images, prompts, metadata):
                r = torch.full((len(images),), 0.5)
                if self.seen == 0:
                    r[0] = float("nan")
                self.seen += len(images)
                return r
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    r = toy_recipe(tmp_path, critics=[{"name": "nan_mod:FirstNaN"}], prompts={"inline": ["only"]})
    data = yaml.safe_load(r.read_text())
    data["run"]["on_nonfinite"] = "skip"
    run_dir = run_recipe(data, progress=False)
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
            for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert rows[0]["initial"]["reward"] is None and rows[0]["final"]["reward"] == 0.5
    assert rows[0]["skipped_nonfinite"] == 1
    with pytest.raises(NonFiniteError, match="FirstNaN"):
        run_recipe(r, progress=False)


# -- 4. run folders ---------------------------------------------------------------------------------
def test_second_process_is_refused_by_the_lock(tmp_path):
    run_dir = run_recipe(toy_recipe(tmp_path), progress=False)
    rec = RunRecord.open(run_dir)  # this process holds the lock now
    code = f"from milr.records import RunRecord\nRunRecord.open({str(run_dir)!r})"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "in use by another milr process" in out.stderr
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", "--resume", str(run_dir)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and f"pid {os.getpid()}" in out.stderr and "Traceback" not in out.stderr
    rec.unlock()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr


def test_resume_refuses_overrides_and_other_recipes(tmp_path, capsys):
    r = toy_recipe(tmp_path)
    run_dir = run_recipe(r, progress=False)
    rc, lines = cli(capsys, "run", "--resume", str(run_dir), "search.n=1")
    assert_clean_error(rc, lines, "give no recipe and no overrides")
    rc, lines = cli(capsys, "run", str(r), "--resume", str(run_dir))
    assert_clean_error(rc, lines, "give no recipe and no overrides")


def test_prompt_file_is_absolute_in_the_manifest_and_checked_on_resume(tmp_path, monkeypatch):
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    r = toy_recipe(tmp_path, prompts={"file": "prompts.txt"})
    monkeypatch.chdir(tmp_path.parent)  # relative to the recipe, not to where the run starts
    run_dir = run_recipe(r, progress=False)
    manifest = RunRecord(run_dir).manifest()
    assert manifest["recipe"]["prompts"]["file"] == str((tmp_path / "prompts.txt").resolve())
    (tmp_path / "prompts.txt").write_text("a red circle\na green cross\n")
    with pytest.raises(RunFolderError, match="prompts changed"):
        run_recipe(None, resume=run_dir, progress=False)


def test_lost_or_truncated_image_reruns_that_prompt(tmp_path):
    run_dir = run_recipe(toy_recipe(tmp_path), progress=False)
    rows = RunRecord(run_dir).results()
    (run_dir / rows[0]["images"]["final"]).unlink()
    p = run_dir / rows[1]["images"]["initial"]
    p.write_bytes(p.read_bytes()[:20])
    logs: list[str] = []
    run_recipe(None, resume=run_dir, progress=False, log=logs.append)
    assert any("redoing" in s for s in logs)
    after = RunRecord(run_dir).results()
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in rows)  # one line per prompt, no loss
    for r in after:
        for k in ("initial", "final"):
            assert (run_dir / r["images"][k]).is_file()


def test_folder_gets_its_name_only_with_a_manifest(tmp_path, monkeypatch):
    from milr import records

    def fail(*a, **k):
        raise KeyboardInterrupt  # a kill between folder creation and manifest

    monkeypatch.setattr(records.RunRecord, "write_manifest", fail)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(toy_recipe(tmp_path), progress=False)
    assert [p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")] == []


# -- 1/6. weights resolved before anything loads; no silent random CLIP --------------------------------
@pytest.mark.parametrize("critic,needle", [
    ({"name": "clip_score"}, "pretrained: random"),
    ({"name": "clip_score", "pretrained": "/no/such/weights.pt"}, "does not exist"),
    ({"name": "trained", "path": "/no/such/critic"}, "not found"),
    ({"name": "detector", "weights": "/no/such/yolo.pt"}, "yolo.pt"),
])
def test_missing_weights_fail_the_dry_run(tmp_path, capsys, critic, needle):
    rc, lines = cli(capsys, "run", "quickstart-oracle", "--dry-run", f"critics=[{json.dumps(critic)}]",
                    f"run.output_dir={tmp_path / 'runs'}")
    assert_clean_error(rc, lines, "critics.0", needle)


def test_random_clip_only_on_request(tmp_path):
    cfg = write_tiny_clip_config(tmp_path / "tiny-clip.json")
    from milr.critics.clip_score import CLIPScore

    with pytest.raises(ValueError, match="pretrained: random"):
        CLIPScore(arch=str(cfg))
    assert CLIPScore(arch=str(cfg), pretrained="random").score(torch.rand(1, 3, 32, 32), ["p"], [{}]).shape == (1,)


def test_user_critics_file_alias_bomb_does_not_hang(tmp_path):
    from milr.critics.trained import register_user_critics

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    f = tmp_path / "critics.yaml"
    f.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="aliases"):
        register_user_critics(f)
    assert time.perf_counter() - t0 < 5


def test_one_progress_line_per_prompt_when_stderr_is_not_a_terminal(tmp_path):
    logs: list[str] = []
    run_recipe(toy_recipe(tmp_path), log=logs.append)  # progress=None and pytest's stderr is no terminal
    lines = [s for s in logs if s.startswith("milr: [")]
    assert [s.split("]")[0] for s in lines] == ["milr: [1/3", "milr: [2/3", "milr: [3/3"]
    assert "p00001" in lines[1] and " -> " in lines[1]


# -- 5. api_judge: a default cap, caps kept across resumes, secrets redacted ------------------------------
@pytest.fixture
def echo_server():
    """A chat endpoint answering 'Yes' (text), or with status 400 echoing the request's headers."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.server.hits += 1
            if self.server.echo:
                code, payload = 400, {"error": {"message": f"bad auth: {self.headers.get('Authorization')}"}}
            else:
                code, payload = 200, {"choices": [{"message": {"content": "Yes"}}]}
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.hits, srv.echo = 0, False
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _judge(srv, **kw):
    from milr.critics.api_judge import APIJudge

    return APIJudge(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model_name="m", api_key_env="MILR_HARD_KEY",
                    questions="prompt", logprobs=False, max_workers=1, max_retries=0, **kw)


def test_api_judge_caps_hold_across_resumes_and_default_to_a_cap(echo_server, tmp_path, monkeypatch):
    from milr.critics.api_judge import APIBudgetExceeded
    from milr.runner import bind_run_folder

    monkeypatch.setenv("MILR_HARD_KEY", "sk-secret-value-42")
    assert _judge(echo_server).max_calls is not None  # never unlimited by default
    images = torch.rand(2, 3, 8, 8)
    first = _judge(echo_server, max_calls=3)
    bind_run_folder([first], tmp_path)
    first.score(images, ["p", "p"], [{}, {}])
    resumed = _judge(echo_server, max_calls=3)  # a new process, same run folder
    bind_run_folder([resumed], tmp_path)
    assert resumed.calls == 2
    with pytest.raises(APIBudgetExceeded, match="max_calls=3"):
        resumed.score(images, ["p", "p"], [{}, {}])
    assert echo_server.hits == 3


def test_api_judge_redacts_the_key_from_errors(echo_server, monkeypatch):
    from milr.critics.api_judge import APIJudgeError

    monkeypatch.setenv("MILR_HARD_KEY", "sk-secret-value-42")
    echo_server.echo = True
    with pytest.raises(APIJudgeError) as e:
        _judge(echo_server).score(torch.rand(1, 3, 8, 8), ["p"], [{}])
    assert "sk-secret-value-42" not in str(e.value) and "***" in str(e.value)


def test_compare_checks_every_search_before_the_first_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc, lines = cli(capsys, "compare", "quickstart-oracle", "--searches", "generate,best_of_n(n=-1)", "--out", str(out))
    assert_clean_error(rc, lines, "--searches best_of_n(n=-1)", "n must be >= 1")
    rc, lines = cli(capsys, "compare", "quickstart-oracle", "--searches", "best_of_n(", "--out", str(out))
    assert_clean_error(rc, lines, "--searches", "cannot read search spec")
    assert not out.exists()


def test_train_config_errors_are_messages(tmp_path, capsys):
    rc, lines = cli(capsys, "train", "minimug", str(tmp_path / "missing.yaml"))
    assert_clean_error(rc, lines, "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_stepz: 3}\n")
    rc, lines = cli(capsys, "train", "minimug", str(bad))
    assert_clean_error(rc, lines, "max_stepz")


@pytest.mark.parametrize("override,key", [
    ("critics.0.weights=.nan", "critics.0.weights"),          # an argument typed Any
    ("critics.0.palette={a: [1, .inf, 2]}", "critics.0.palette.a.1"),
])
def test_non_finite_numbers_are_refused_whatever_the_type(capsys, override, key):
    rc, lines = cli(capsys, "show", "quickstart", override)
    assert_clean_error(rc, lines, key, "finite")


def test_a_path_too_long_is_a_message(capsys):
    rc, lines = cli(capsys, "show", "mixed-reward", "combine.normalize.world_pref.reference=" + "x" * 5000)
    assert_clean_error(rc, lines, "combine", "too long")


def test_list_into_a_closed_pipe_is_not_an_error():
    # `milr list | head -1`: the reader leaves early; milr must exit quietly, not report an internal error.
    import subprocess

    out = subprocess.run("milr list | head -1", shell=True, capture_output=True, text=True, timeout=60,
                         executable="/bin/bash")
    assert out.stdout.strip() == "critics:"
    assert "error" not in out.stderr, out.stderr
