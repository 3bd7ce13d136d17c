"""Robustness: how every malformed recipe, damaged run folder, kill and second process ends.

Two parts, in the spirit of fuzzing a CLI (no code from any fuzzer):

* **recipes** -- each shipped run recipe is mutated (every leaf key set to NaN, infinity, a wrong
  type, a huge or negative number, unicode, null, a nested value, a misspelt key; known-bad values
  for the keys that matter; whole-file damage: alias bombs, recursion, deep nesting, non-UTF-8,
  truncation, garbage, bad ``extends``) and run through ``milr show`` and ``milr run --dry-run``
  in-process (``milr.cli.main``) in a pool of worker processes with a timeout per case and a
  memory cap per worker;
* **run folders** -- a tiny MiniMUG run (3 prompts, 1 step) killed with SIGKILL at each of its
  write points (before a write, or mid-line), damaged after it finished (truncated results,
  deleted or truncated images, lost or garbled manifest), and resumed by two processes at once;
  then resumed and checked for exactly one line per prompt.

Each case ends in one column: ``clean error`` (exit 2, every stderr line ``milr: ... error: ...``),
``traceback`` (a traceback, or exit 1: an internal error), ``hang`` (past the timeout),
``accepted-bad`` (exit 0 for a case that must fail), ``ok`` (exit 0 for a case that may be valid;
for run folders: resumed to exactly one line per prompt), ``lines lost or doubled`` (a resumed run
folder without exactly one line per prompt).
Usage::

    python benchmarks/robustness.py [--workers 2] [--timeout 30] [--max-cases N] [--skip-folders] [--skip-recipes]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

COLUMNS = ("tried", "clean error", "traceback", "hang", "accepted-bad", "ok", "lines lost or doubled")
MEMORY_CAP = 6 << 30  # a worker past this gets MemoryError (counted as a traceback), never the machine's swap


# ---------------------------------------------------------------------------------------------
# Running one CLI call and classifying how it ended
# ---------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> tuple[Any, str]:
    """``milr.cli.main(argv)`` with output captured; (exit code or 'exception', stderr)."""
    from milr.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - escaped main(): a traceback by definition
        import traceback

        return "exception", err.getvalue() + "".join(traceback.format_exception(e))
    return rc, err.getvalue()


def classify(rc: Any, stderr: str, must_fail: Optional[bool]) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("#")]
    if rc == "exception" or "Traceback (most recent call last)" in stderr or rc not in (0, 2):
        return "traceback"
    if rc == 2:
        ok = lines and all(line.startswith("milr: ") and " error: " in line for line in lines)
        return "clean error" if ok else "traceback"
    return "accepted-bad" if must_fail else "ok"


def _worker_init() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    os.chdir(tempfile.mkdtemp(prefix="milr-robust-"))
    import milr.cli  # noqa: F401 - warm the imports once per worker
    from milr.registry import _ensure_builtin_index

    _ensure_builtin_index()


def _run_case(case: dict) -> tuple[str, str]:
    folder = Path(tempfile.mkdtemp(prefix="case-"))
    try:
        argv = [a.replace("{dir}", str(folder)) for a in case["argv"]]
        if case.get("file") is not None:
            (folder / "recipe.yaml").write_bytes(case["file"])
        outcomes = [classify(*_cli(argv[:1] + argv[1:]), case["must_fail"])]
        if argv[0] == "show":  # the same case through run --dry-run
            outcomes.append(classify(*_cli(["run", argv[1], "--dry-run", *argv[2:]]), case["must_fail"]))
        order = ("traceback", "accepted-bad", "clean error", "ok")
        worst = min(outcomes, key=order.index)
        return worst, ""
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Recipe mutations
# ---------------------------------------------------------------------------------------------
def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, f"{prefix}{i}.")]
    return [prefix[:-1]]


BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)])

# Values wrong for every key (never a setting), and values that may or may not be valid.
ALWAYS_BAD = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf", "deep": "[" * 80 + "]" * 80}
MAYBE = {"string": "abc", "negative": "-1", "zero": "0", "huge": "1e308", "hugeint": str(2**70), "unicode": "ünï✓ 名",
         "empty": "", "null": "null", "list": "[1, 2]", "map": "{a: 1}", "bool": "true", "long": "x" * 5000}
# Known-bad values for the keys that matter (from issues 14 and 15, and their neighbours).
KNOWN_BAD = [
    "run.seed=-1", f"run.seed={2**64}", "run.threads=0", "run.threads=100000", "run.device=gpu", "run.dtype=float8",
    "run.name=../escape", "run.output_dir=", "run.on_nonfinite=ignore", "run.budget.critic_calls=-5",
    "run.budget.seconds=.nan", "prompts.split=abc", "prompts.limit=0", "prompts.per_tag=-2", "prompts.tags=[nope]",
    "prompts.file=/no/such/prompts.txt", "prompts.suite=no-such-suite", "search.name=reinfroce", "search.steps=-1",
    "search.lr=abc", "search.mode=latent", "search.preset=fast", "model.name=os:system", "model.name=os:no_such_attr",
    "model.name=milr.interfaces:MUGModel", "model.name=no.such.module:X", "model.name=mini_mug", "critics.0.name=clip_scor",
    "critics.0.weight=.nan", "critics.0.name=builtins:eval", "critics.0.mode=dense", "evaluate.0.mode=binry",
    "combine.mode=summ", "critics.0.name=clip_score", "critics=[]", "critics=5", "search=7", "prompts=null",
    # (prompts={} is no longer bad: under the one merge rule an empty mapping changes nothing)
    "prompts.inline=[]", "prompts.inline=[{id: a, prompt: x}, {id: a, prompt: y}]", "extends=nothing-here",
]


def recipe_cases(rng: random.Random, limit: Optional[int]) -> list[dict]:
    from milr.recipe import load_raw, shipped_recipes

    cases: list[dict] = []
    run_recipes = {}
    for name, path in sorted(shipped_recipes().items()):
        raw = load_raw(path)
        if {"model", "search", "prompts"} <= set(raw):  # run recipes (train-* recipes have their own commands)
            run_recipes[name] = (path, raw)
    for name, (path, raw) in run_recipes.items():
        cases.append({"kind": "shipped as is", "argv": ["show", name], "must_fail": False})
        for leaf in _leaves(raw):
            for kind, value in ALWAYS_BAD.items():
                cases.append({"kind": f"leaf {kind}", "argv": ["show", name, f"{leaf}={value}"], "must_fail": True})
            for kind, value in MAYBE.items():
                cases.append({"kind": f"leaf {kind}", "argv": ["show", name, f"{leaf}={value}"], "must_fail": None})
            cases.append({"kind": "misspelt key", "argv": ["show", name, f"{leaf}zz=1"], "must_fail": True})
        for item in KNOWN_BAD:
            key = item.split("=", 1)[0]
            # a key the recipe lacks (combine in a one-critic recipe) may be valid to add: not "must fail"
            present = key.split(".")[0] in raw
            cases.append({"kind": "known bad", "argv": ["show", name, item],
                          "must_fail": present or item.startswith(("run.", "prompts.", "model.", "search.", "critics"))})
        text = path.read_text()
        files = {
            "alias bomb": (text + "\n" + BOMB + "\n", True),
            "recursive alias": (text + "\nloop: &l [*l]\n", True),
            "deep nesting": (text + "\ndescription: " + "[" * 200 + "]" * 200 + "\n", True),
            "non-UTF-8": (text.replace("model", "mod\xe9l", 1).encode("latin-1", "replace"), True),
            "garbage": (bytes(rng.randrange(256) for _ in range(400)), True),
            "top-level list": ("- " + text.replace("\n", "\n  "), True),
            "extends itself": (f"extends: recipe.yaml\n{text}", True),
            "extends missing": (f"extends: /no/such.yaml\n{text}", True),
            "python tag": (text + "\nevil: !!python/object/apply:os.system ['true']\n", True),
            "2 MB": (text + "\n#" + "x" * (2 << 20) + "\n", True),
            "empty": ("", True),
        }
        for k in range(12):
            cut = rng.randrange(1, max(2, len(text)))
            files[f"truncated {k}"] = (text[:cut], None)
        for kind, (content, must_fail) in files.items():
            data = content if isinstance(content, bytes) else content.encode()
            cases.append({"kind": f"file {kind}", "argv": ["show", "{dir}/recipe.yaml"], "file": data, "must_fail": must_fail})
    # Every whole-file, known-bad and as-shipped case; per-leaf mutations sampled to fill the limit.
    fixed = [c for c in cases if not c["kind"].startswith(("leaf", "misspelt"))]
    sampled = [c for c in cases if c["kind"].startswith(("leaf", "misspelt"))]
    rng.shuffle(sampled)
    chosen = fixed + sampled[: max(0, (limit or len(cases)) - len(fixed))]
    rng.shuffle(chosen)
    return chosen


def run_recipe_part(workers: int, timeout: float, limit: Optional[int], seed: int) -> tuple[dict, list[str]]:
    cases = recipe_cases(random.Random(seed), limit)
    counts = dict.fromkeys(COLUMNS, 0)
    notes: list[str] = []
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_worker_init)
    pending = [(c, pool.apply_async(_run_case, (c,))) for c in cases]
    for case, res in pending:
        counts["tried"] += 1
        try:
            outcome, _ = res.get(timeout=timeout if counts["tried"] > workers else timeout + 120)
        except mp.TimeoutError:
            outcome = "hang"
            # A stuck worker cannot be interrupted: restart the pool and resubmit what is left.
            pool.terminate()
            pool = ctx.Pool(workers, initializer=_worker_init)
            rest = pending[pending.index((case, res)) + 1:]
            pending[pending.index((case, res)) + 1:] = [(c, pool.apply_async(_run_case, (c,))) for c, _ in rest]
        except Exception as e:  # a worker killed by the memory cap, say
            outcome = "traceback"
            notes.append(f"{case['kind']}: worker failed: {type(e).__name__}: {e}")
        counts[outcome] += 1
        if outcome in ("traceback", "hang", "accepted-bad"):
            notes.append(f"{outcome}: {case['kind']}: {' '.join(case['argv'])[:160]}")
    pool.terminate()
    return counts, notes


# ---------------------------------------------------------------------------------------------
# Run folders: kills at each write point, damage, two processes
# ---------------------------------------------------------------------------------------------
TINY = ["prompts.per_tag=1", "prompts.tags=[colors, position, counting]", "search.steps=1"]


def _killing_run(argv: list[str], kill_at: int, torn: bool) -> None:
    """Child process: run ``milr`` and SIGKILL itself at write event ``kill_at`` (mid-line if ``torn``)."""
    from milr import records

    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == kill_at

    orig_append, orig_save, orig_atomic = records.RunRecord.append, records.RunRecord.save_image, records._atomic_write

    def append(self, result):
        if hit():
            if torn:
                line = json.dumps(records.strict_json(result)).encode()
                with open(self.results_path, "ab") as f:
                    f.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_append(self, result)

    def save_image(self, image, name):
        if hit():
            if torn:
                (self.images / name).write_bytes(b"\x89PNG\r\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_save(self, image, name)

    def atomic(path, text):
        if hit():
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_atomic(path, text)

    records.RunRecord.append, records.RunRecord.save_image, records._atomic_write = append, save_image, atomic
    with contextlib.redirect_stderr(io.StringIO()):
        os._exit(main_rc(argv))


def main_rc(argv: list[str]) -> int:
    rc, _ = _cli(argv)
    return rc if isinstance(rc, int) else 1


def _check_lines(run_dir: Path, expected: set[str]) -> bool:
    from milr.run_record import read_records

    ids = [r.id for r in read_records(run_dir, skip_torn=False)]  # typed lines: a bad one is an error
    return len(ids) == len(set(ids)) and set(ids) == expected


def _resume(run_dir: Path) -> tuple[Any, str]:
    return _cli(["run", "--resume", str(run_dir)])


def run_folder_part(tmp: Path) -> tuple[dict, list[str]]:
    from milr.prompts import load_tasks
    from milr.recipe import load_recipe

    counts = dict.fromkeys(COLUMNS, 0)
    notes: list[str] = []
    recipe = load_recipe("quickstart-oracle", TINY)
    expected = {t.id for t in load_tasks(recipe.prompts, recipe.source)}
    fork = mp.get_context("fork")

    def record(outcome: str, what: str) -> None:
        counts["tried"] += 1
        counts[outcome] += 1
        if outcome not in ("clean error", "ok"):
            notes.append(f"{outcome}: {what}")

    def finish(out: Path, what: str) -> None:
        """Resume whatever the kill left, then check one line per prompt."""
        runs = [d for d in out.iterdir() if not d.name.startswith(".")] if out.exists() else []
        if not runs:  # killed before the folder got its name: nothing to resume, nothing lost
            record("ok", what)
            return
        rc, err = _resume(runs[0])
        if rc != 0:
            record(classify(rc, err, False) if rc != 2 else "lines lost or doubled", f"{what}: resume exit {rc}: {err.strip()[-200:]}")
            return
        record("ok" if _check_lines(runs[0], expected) else "lines lost or doubled", what)

    # A complete run first: its folder is the template for the damage cases, its writes the kill points.
    base = tmp / "complete"
    rc, err = _cli(["run", "quickstart-oracle", *TINY, f"run.output_dir={base}"])
    if rc != 0:
        raise SystemExit(f"the tiny run failed: {err[-2000:]}")
    complete = next(base.iterdir())
    writes = 1 + 3 * len(expected) + 2  # manifest, (2 images + 1 line) per prompt, summary files
    for kill_at in range(1, writes + 1):
        for torn in (kill_at % 2 == 0,):  # alternate: killed before the write, or in the middle of it
            out = tmp / f"kill-{kill_at}-{int(torn)}"
            p = fork.Process(target=_killing_run, args=(["run", "quickstart-oracle", *TINY, f"run.output_dir={out}"], kill_at, torn))
            p.start()
            p.join(600)
            finish(out, f"kill at write {kill_at}{' mid-write' if torn else ''}")

    def damaged(what: str, damage, must_resume: bool) -> None:
        d = tmp / f"damage-{counts['tried']}" / complete.name
        shutil.copytree(complete, d)
        (d / ".lock").unlink(missing_ok=True)
        rows = [json.loads(s) for s in (d / "results.jsonl").read_text().splitlines()]
        damage(d, rows)
        rc, err = _resume(d)
        if not must_resume:
            record(classify(rc, err, True), what)
        elif rc != 0:
            record(classify(rc, err, False), f"{what}: exit {rc}: {err.strip()[-200:]}")
        else:
            record("ok" if _check_lines(d, expected) else "lines lost or doubled", what)

    def truncate(path: Path, keep: float) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    damaged("results.jsonl cut mid-line", lambda d, rows: truncate(d / "results.jsonl", 0.7), True)
    damaged("results.jsonl emptied", lambda d, rows: (d / "results.jsonl").write_text(""), True)
    damaged("results.jsonl line doubled", lambda d, rows: (d / "results.jsonl").write_text(
        (d / "results.jsonl").read_text() + (d / "results.jsonl").read_text().splitlines()[0] + "\n"), True)
    damaged("results.jsonl garbage line", lambda d, rows: (d / "results.jsonl").open("a").write("{garbage\n"), True)
    damaged("final image deleted", lambda d, rows: (d / rows[0]["images"]["final"]).unlink(), True)
    damaged("initial image truncated", lambda d, rows: truncate(d / rows[1]["images"]["initial"], 0.3), True)
    damaged("images folder deleted", lambda d, rows: shutil.rmtree(d / "images"), True)
    damaged("manifest deleted", lambda d, rows: (d / "manifest.json").unlink(), False)
    damaged("manifest truncated", lambda d, rows: truncate(d / "manifest.json", 0.5), False)
    damaged("manifest not an object", lambda d, rows: (d / "manifest.json").write_text("[1, 2]"), False)
    damaged("manifest recipe damaged", lambda d, rows: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "recipe": {"model": 5}})), False)

    # Two processes resume one folder at once: one runs, the other is refused (or finds it done).
    for k in range(2):
        out = tmp / f"two-{k}"
        p = fork.Process(target=_killing_run, args=(["run", "quickstart-oracle", *TINY, f"run.output_dir={out}"], 2, False))
        p.start()
        p.join(600)  # killed right after its manifest: every prompt still to do
        run_dir = next(d for d in out.iterdir() if not d.name.startswith("."))
        procs = [fork.Process(target=lambda: os._exit(main_rc(["run", "--resume", str(run_dir)]))) for _ in range(2)]
        for q in procs:
            q.start()
        for q in procs:
            q.join(600)
        codes = sorted(q.exitcode for q in procs)
        ok = codes in ([0, 0], [0, 2]) and _check_lines(run_dir, expected)
        record("ok" if ok else "lines lost or doubled", f"two processes resume at once (exit codes {codes})")
        notes.append(f"two processes resume one folder: exit codes {codes}, one line per prompt: {_check_lines(run_dir, expected)}")
    return counts, notes


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per recipe case before it counts as a hang")
    ap.add_argument("--max-cases", type=int, default=600,
                    help="recipe cases to try: every file and known-bad case, then sampled leaf mutations (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-folders", action="store_true")
    ap.add_argument("--skip-recipes", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows: dict[str, dict] = {}
    notes: list[str] = []
    if not args.skip_recipes:
        rows["recipes (show + --dry-run)"], n = run_recipe_part(args.workers, args.timeout, args.max_cases, args.seed)
        notes += n
    if not args.skip_folders:
        with tempfile.TemporaryDirectory(prefix="milr-robust-folders-") as tmp:
            rows["run folders (kills, damage, 2 processes)"], n = run_folder_part(Path(tmp))
            notes += n
    print("| part | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for part, c in rows.items():
        print(f"| {part} | " + " | ".join(str(c[k]) for k in COLUMNS) + " |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    for line in notes[:40]:
        print("  " + line)
    bad = sum(c[k] for c in rows.values() for k in ("traceback", "hang", "accepted-bad", "lines lost or doubled"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
