"""Property-based tests (hypothesis) of recipes and overrides: every input ends valid or in a one-line message.

Generated overrides (every type, range, NaN/inf, unicode, deep nesting), whole recipes with
random subtrees replaced, YAML aliases, and ``extends`` chains (cycles included) go through
``milr show`` in-process. Each must end in exit 0 with a recipe that keeps every bound, or exit 2
with only ``milr: ... error: ...`` lines: never a traceback, a hang (deadline) or an
out-of-range value accepted. Small ``max_examples`` keep each test to seconds.
"""

from __future__ import annotations

import contextlib
import io
import math
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from milr.cli import main  # noqa: E402
from milr.recipe import MAX_SEED, MAX_THREADS  # noqa: E402

SETTINGS = settings(max_examples=20, deadline=timedelta(seconds=10), derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

BASE = {
    "model": {"name": "minimug"},
    "critics": [{"name": "world_oracle", "mode": "partial", "weight": 1.0}],
    "search": {"name": "reinforce", "steps": 3, "lr": 0.03},
    "prompts": {"suite": "minimug-world", "split": "test", "per_tag": 1},
    "evaluate": [{"name": "world_oracle"}],
    "run": {"seed": 0, "threads": 1, "output_dir": "runs", "budget": {"critic_calls": 10}},
}
KEYS = ["run.seed", "run.threads", "run.device", "run.dtype", "run.name", "run.output_dir", "run.on_nonfinite",
        "run.budget.critic_calls", "run.budget.seconds", "prompts.split", "prompts.per_tag", "prompts.limit",
        "prompts.tags", "prompts.inline", "search.steps", "search.lr", "search.mode", "search.threshold",
        "critics.0.weight", "critics.0.mode", "critics.0.partial_weight", "evaluate.0.mode", "model.name",
        "search.name", "description", "critics", "prompts", "run", "nosuch", "run.nosuch", "search.nosuch"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=20)


def show(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["show", *argv])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _finite_everywhere(node) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, dict):
        return all(_finite_everywhere(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite_everywhere(v) for v in node)
    return True


def check(rc: int, out: str, err: str) -> None:
    """Valid with every bound kept, or one-line messages only."""
    assert "Traceback" not in err
    if rc == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and all(line.startswith("milr: ") and " error: " in line for line in lines), err
        return
    assert rc == 0, (rc, err)
    shown = yaml.safe_load(out)
    run, prompts = shown["run"], shown["prompts"]
    assert isinstance(run["seed"], int) and 0 <= run["seed"] <= MAX_SEED
    assert run.get("threads") is None or 1 <= run["threads"] <= MAX_THREADS
    for k in ("limit", "per_tag"):
        assert prompts.get(k) is None or prompts[k] >= 1
    assert _finite_everywhere(shown), "a non-finite number was accepted"
    assert all(isinstance(c["weight"], float) for c in shown["critics"])


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prop") / "base.yaml"
    p.write_text(yaml.safe_dump(BASE))
    return p


@SETTINGS
@given(key=st.sampled_from(KEYS), value=values)
def test_any_override_ends_valid_or_in_a_message(base_file, key, value):
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    check(*show(str(base_file), f"{key}={text}"))


@SETTINGS
@given(key=st.sampled_from(KEYS), raw=st.text(max_size=60))
def test_raw_override_text_ends_valid_or_in_a_message(base_file, key, raw):
    check(*show(str(base_file), f"{key}={raw}"))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@SETTINGS
@given(data=st.data())
def test_recipe_with_a_subtree_replaced_ends_valid_or_in_a_message(tmp_path_factory, data):
    import copy

    recipe = copy.deepcopy(BASE)
    paths = [p for p in _paths(recipe) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = recipe
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = data.draw(values)
        except (KeyError, IndexError, TypeError):  # an earlier replacement removed this path
            continue
    f = tmp_path_factory.mktemp("sub") / "r.yaml"
    f.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    check(*show(str(f)))


@SETTINGS
@given(depth=st.integers(1, 12), fanout=st.integers(1, 12), where=st.sampled_from(["description", "search.extra", "junk"]))
def test_yaml_aliases_end_valid_or_in_a_message(tmp_path_factory, depth, fanout, where):
    lines = [f"a0: &a0 [{', '.join(['x'] * fanout)}]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, depth)]
    body = yaml.safe_dump(BASE).splitlines()
    f = tmp_path_factory.mktemp("alias") / "r.yaml"
    if where == "search.extra":
        body = [line for line in body]
        f.write_text("\n".join(["_anchors:"] + ["  " + line for line in lines] + body) + f"\n")
    else:
        f.write_text("\n".join(lines + body) + f"\n{where}: *a{depth - 1}\n")
    rc, out, err = show(str(f))
    assert rc == 2  # the anchors are unknown top-level keys at least; never a hang or a blow-up
    check(rc, out, err)


@SETTINGS
@given(n=st.integers(1, 6), cycle=st.booleans(), override=st.sampled_from(["", "search.steps=2", "run.seed=-4"]),
       deep=st.integers(0, 80))
def test_extends_chains_end_valid_or_in_a_message(tmp_path_factory, n, cycle, override, deep):
    d = tmp_path_factory.mktemp("chain")
    (d / "r0.yaml").write_text(("extends: r%d.yaml\n" % (n - 1) if cycle else "") + yaml.safe_dump(BASE))
    for i in range(1, n):
        extra = {"search": {"steps": i}} if i % 2 else {"description": "é" * i + "[" * deep + "]" * deep}
        (d / f"r{i}.yaml").write_text(f"extends: r{i - 1}.yaml\n" + yaml.safe_dump(extra, allow_unicode=True))
    argv = [str(d / f"r{n - 1}.yaml")] + ([override] if override else [])
    rc, out, err = show(*argv)
    check(rc, out, err)
    if cycle:
        assert rc == 2 and "circular extends" in err
