"""``milr compare --recipes``: MILR's gain per search critic at one budget (issue 11's table)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from milr.compare_critics import bootstrap_overall, parse_recipes, pool_rows, summarise


def _rows(spec):
    return [{"id": f"p{i}", "tag": tag, "before": b, "after": a, "tokens": 100, "critic_calls": 1}
            for i, (tag, b, a) in enumerate(spec)]


def test_summary_gains_fixed_broken_and_share_of_the_oracle_gain():
    # Two categories of two prompts. Oracle fixes both failing prompts; the other critic fixes one
    # and breaks one passing prompt.
    oracle = _rows([("counting", 0, 1), ("counting", 1, 1), ("position", 0, 1), ("position", 1, 1)])
    other = _rows([("counting", 0, 1), ("counting", 1, 0), ("position", 0, 0), ("position", 1, 1)])
    s = summarise({"oracle": oracle, "other": other}, "oracle")
    # Oracle: category means 0.5 -> 1.0 in both: overall gain 0.5.
    assert s["oracle"]["before"] == 0.5 and s["oracle"]["after"] == 1.0 and s["oracle"]["gain"] == 0.5
    assert (s["oracle"]["fixed"], s["oracle"]["broken"]) == (2, 0)
    # Other: counting 0.5 -> 0.5, position 0.5 -> 0.5: gain 0, one fixed, one broken.
    assert s["other"]["gain"] == 0.0 and (s["other"]["fixed"], s["other"]["broken"]) == (1, 1)
    assert s["other"]["share_of_oracle_gain"] == 0.0 and s["oracle"]["share_of_oracle_gain"] == 1.0
    assert s["other"]["per_tag"]["counting"] == {"before": 0.5, "after": 0.5, "gain": 0.0}


def test_rows_must_share_prompts():
    with pytest.raises(ValueError, match="prompts differ"):
        summarise({"a": _rows([("counting", 0, 1)]), "b": [dict(_rows([("counting", 0, 1)])[0], id="q")]}, None)


def test_bootstrap_interval_of_a_constant_is_the_constant():
    v, t = np.array([1.0, 1.0, 0.0, 0.0]), np.array(["a", "a", "b", "b"])
    assert bootstrap_overall(v, t, ["a", "b"], n=200) == (0.5, 0.5)


def test_pool_rows_counts_each_search_once_at_one_budget():
    a = {"oracle": _rows([("counting", 0, 1), ("position", 0, 1)]), "other": _rows([("counting", 0, 0), ("position", 0, 1)]),
         "only_a": _rows([("counting", 0, 0), ("position", 0, 0)])}
    b = {"oracle": _rows([("counting", 1, 1), ("position", 0, 1)]), "other": _rows([("counting", 1, 0), ("position", 0, 1)])}
    pooled = pool_rows([("a", 0, 3200, a), ("b", 1, 3200, b)])
    assert list(pooled) == ["oracle", "other"]  # a label absent from one comparison is left out
    assert [r["id"] for r in pooled["other"]] == ["seed0/p0", "seed0/p1", "seed1/p0", "seed1/p1"]
    s = summarise(pooled, "oracle")
    # oracle: counting 0.5 -> 1, position 0 -> 1 (gain 0.75); other: counting 0.5 -> 0, position 0 -> 1 (gain 0.25).
    assert s["oracle"]["gain"] == 0.75 and s["other"]["gain"] == 0.25 and s["other"]["share_of_oracle_gain"] == 1 / 3
    assert (s["other"]["fixed"], s["other"]["broken"]) == (2, 1)
    with pytest.raises(ValueError, match="each search may count once"):
        pool_rows([("a", 0, 3200, a), ("a again", 0, 3200, a)])
    with pytest.raises(ValueError, match="different generator-token budgets"):
        pool_rows([("a", 0, 3200, a), ("b", 1, 1600, b)])
    with pytest.raises(ValueError, match="no recipe label"):
        pool_rows([("a", 0, 3200, {"x": a["oracle"]}), ("b", 1, 3200, {"y": b["oracle"]})])


def test_parse_recipes():
    assert parse_recipes("oracle=quickstart-oracle, quickstart") == {"oracle": "quickstart-oracle", "quickstart": "quickstart"}
    for bad in ("", "a=x,a=y", "=x"):
        with pytest.raises(ValueError):
            parse_recipes(bad)


@pytest.mark.slow
def test_compare_recipes_end_to_end_same_initial_images_and_resume(tmp_path, capsys):
    from milr.cli import main

    out = tmp_path / "cmp"
    args = ["compare", "--recipes", "oracle=quickstart-oracle,detector=quickstart", "prompts.limit=2", "search.steps=1",
            "run.budget.generator_tokens=600", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "critic-gains.json").read_text())
    rows = data["summary"]
    assert set(rows) == {"oracle", "detector"}
    assert rows["oracle"]["oracle"] == "yes" and rows["detector"]["oracle"] != "yes"
    # Same prompts and seeds: both searches start from the same ordinary generation.
    assert rows["oracle"]["before"] == rows["detector"]["before"]
    assert all(r["tokens_per_prompt"] <= 600 + 200 for r in rows.values())  # the cap (one generation may finish)
    table = (out / "critic-gains.md").read_text()
    assert "| oracle (`quickstart-oracle`) | yes |" in table
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert main(args) == 0  # a second call resumes the finished runs instead of running again
    assert sorted(p.name for p in (out / "runs").iterdir()) == folders

    # Another seed, then one table over both: every search once, the gain the mean of the two.
    out1 = tmp_path / "cmp1"
    assert main([a if a != str(out) else str(out1) for a in args] + ["run.seed=1"]) == 0
    gains = [json.loads((o / "critic-gains.json").read_text())["summary"]["detector"]["gain"] for o in (out, out1)]
    pooled = tmp_path / "pooled"
    assert main(["compare", "--pool", f"{out},{out1}", "--out", str(pooled)]) == 0
    p = json.loads((pooled / "critic-gains.json").read_text())["summary"]
    assert p["detector"]["n"] == 2 * rows["detector"]["n"]
    assert p["detector"]["gain"] == pytest.approx(sum(gains) / 2)
    assert "pooled over 2 comparisons" in (pooled / "critic-gains.md").read_text()
    assert main(["compare", "--pool", f"{out},{out}", "--out", str(tmp_path / "twice")]) == 2
    assert "each search may count once" in capsys.readouterr().err
    assert main(["compare", "--pool", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
