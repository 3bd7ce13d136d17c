"""``run.executor: ray`` on this CPU with logical devices (real worker processes, not local mode):
1 and 2 workers give the local run's records; a worker killed mid-run still leaves one valid line per
prompt; a killed driver resumes; api_judge's cost cap is one cap for all workers."""

import json
import os

import pytest
import yaml

pytestmark = pytest.mark.slow  # Ray starts worker processes that import torch: tens of seconds, not seconds
ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (the test extra has it)")

from milr.records import RunRecord  # noqa: E402
from milr.runner import run_recipe  # noqa: E402
from test_runner import PROMPTS, TESTS, kill_and_resume, recipe  # noqa: E402
from test_hardening import echo_server  # noqa: E402,F401 (a fixture)
from test_shards import comparable  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """Two logical GPUs on two CPUs; workers find the test doubles through PYTHONPATH."""
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             object_store_memory=80 * 2**20, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def ray_recipe(tmp_path, workers, **kw):
    return recipe(tmp_path, executor="ray", workers=workers, gpus_per_worker=1, threads=1, **kw)


def by_index(run_dir):
    return comparable(sorted(RunRecord(run_dir).results(), key=lambda r: r["index"]))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return run_recipe(recipe(tmp_path_factory.mktemp("local"), prompts=PROMPTS[:6]), progress=False, log=lambda s: None)


def test_one_and_two_workers_give_the_local_records(cluster, local_run, tmp_path):
    want = by_index(local_run)
    for workers, batch in ((1, 1), (2, 3)):  # 2 workers also batch 3 prompts each, refilled from the queue
        # (which worker pulls which prompt is timing: under load the first one up may take them all)
        run_dir = run_recipe(ray_recipe(tmp_path / str(workers), workers, prompts=PROMPTS[:6], batch_prompts=batch),
                             progress=False, log=lambda s: None)
        assert by_index(run_dir) == want, f"{workers} worker(s)"
        for r in RunRecord(run_dir).results():
            assert (run_dir / r["images"]["final"]).is_file()


def test_a_killed_worker_is_replaced_and_its_prompt_retried(cluster, tmp_path):
    marker = tmp_path / "killed-once"
    critic = {"name": "doubles:ExitOnceCritic", "marker": str(marker), "prompt": PROMPTS[2]}
    path = ray_recipe(tmp_path / "ray", 2, prompts=PROMPTS[:5])
    data = yaml.safe_load(path.read_text())
    data["critics"] = [critic]
    path.write_text(yaml.safe_dump(data))
    logged = []
    run_dir = run_recipe(path, progress=False, log=logged.append)
    assert marker.exists() and any("lost" in line for line in logged)
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    results = [json.loads(line) for line in lines]
    assert sorted(r["index"] for r in results) == list(range(5))  # exactly one line per prompt
    # The retried prompt's record is the one an undisturbed run gives (the marker now exists).
    data["run"] = {k: v for k, v in data["run"].items() if k not in ("executor", "workers", "gpus_per_worker")}
    data["run"]["output_dir"] = str(tmp_path / "local")
    path.write_text(yaml.safe_dump(data))
    assert by_index(run_recipe(path, progress=False, log=lambda s: None)) == by_index(run_dir)


def test_a_prompt_that_kills_every_worker_stops_the_run(cluster, tmp_path, monkeypatch):
    from milr.executors import ray_executor

    monkeypatch.setattr(ray_executor, "MAX_ATTEMPTS", 2)  # two deaths are enough to show the rule
    path = ray_recipe(tmp_path, 1, prompts=PROMPTS[:2])
    data = yaml.safe_load(path.read_text())
    data["critics"] = [{"name": "doubles:ExitOnceCritic", "marker": str(tmp_path / "deaths"), "prompt": PROMPTS[1],
                        "times": 5}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RuntimeError, match="prompt 'p00001': its worker died 2 times"):
        run_recipe(path, progress=False, log=lambda s: None)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [r["id"] for r in RunRecord(run_dir).results()] == ["p00000"]  # the other prompt was kept


def test_a_worker_that_cannot_build_stops_the_run_with_its_error(cluster, tmp_path):
    """A constructor's error is the component's, not a lost worker: raised as is, never retried."""
    path = ray_recipe(tmp_path, 1, prompts=PROMPTS[:2])
    data = yaml.safe_load(path.read_text())
    data["model"]["image_tokens"] = 15  # passes the recipe's type check; ToyMUG refuses it when built
    path.write_text(yaml.safe_dump(data))
    logged = []
    with pytest.raises(ValueError, match="image_tokens must be a square number"):
        run_recipe(path, progress=False, log=logged.append)
    assert not any("lost" in line for line in logged)


def test_a_killed_driver_resumes(tmp_path):
    # The driver (a `milr run` process) starts its own Ray: 2 CPUs here, no logical GPU, one CPU per worker.
    # Its workers die with it (Ray's fate sharing); the resumed run starts new ones.
    kill_and_resume(tmp_path, executor="ray", workers=2, threads=1)


def test_too_few_devices_is_a_one_line_error_before_the_folder(cluster, tmp_path, capsys):
    from milr.cli import main

    assert main(["run", str(recipe(tmp_path, executor="ray", workers=3, gpus_per_worker=1))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs 3 GPUs; the Ray cluster has 2" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_api_judge_cap_is_one_cap_for_all_workers(cluster, echo_server, tmp_path):
    """Two workers' judges count in the run's one ledger: max_calls=5 sends 5 requests, not 5 per worker."""
    from milr.critics.api_judge import APIBudgetExceeded

    path = ray_recipe(tmp_path, 2, prompts=PROMPTS[:6])
    data = yaml.safe_load(path.read_text())
    data["evaluate"] = [{"name": "api_judge", "base_url": f"http://127.0.0.1:{echo_server.server_address[1]}/v1",
                         "model_name": "m", "api_key_env": None, "questions": "prompt", "logprobs": False,
                         "max_workers": 1, "max_retries": 0, "max_calls": 5}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(APIBudgetExceeded, match="max_calls=5"):
        run_recipe(path, progress=False, log=lambda s: None)
    assert echo_server.hits == 5
    (spend,) = (tmp_path / "runs").glob("*/api_judge-spend-*.json")
    assert json.loads(spend.read_text())["calls"] == 5


def test_feed_chunks_shrink_as_the_queue_empties_and_a_dead_workers_prompts_come_back():
    """Guided self-scheduling: a pull takes ceil(left / (4 x workers)) prompts (at most 16), so the
    last pulls take one prompt each; give_back returns everything a worker pulled, in prompt order."""
    from types import SimpleNamespace

    from milr.executors.ray_executor import Feed

    tasks = [SimpleNamespace(id=f"p{i}", index=i) for i in range(100)]
    feed = Feed(tasks, workers=2)
    sizes, pulled = [], {0: [], 1: []}
    while chunk := feed.pull(len(sizes) % 2):
        pulled[len(sizes) % 2] += [t.index for t in chunk]
        sizes.append(len(chunk))
    assert sizes[0] == 13 and sizes == sorted(sizes, reverse=True) and sizes[-3:] == [1, 1, 1]
    assert sorted(pulled[0] + pulled[1]) == list(range(100)) and sum(sizes) == 100
    assert [t.index for t in feed.give_back(1)] == sorted(pulled[1]) and feed.give_back(1) == []
    assert feed.requeue([tasks[5]]) == 1 and feed.pull(0) == [tasks[5]]
    assert len(Feed(tasks, workers=1).pull(0)) == 16  # ceil(100 / 4) = 25, capped
