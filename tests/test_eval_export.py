"""milr export / milr eval: official layouts, the round trip on a MiniMUG run, aggregation, the oracle flag.

Expected numbers are computed by hand from the rules in docs/benchmarks.md (GenEval: task = mean
over images, overall = mean of tasks; WISE: 0.4/0.167/0.133/0.1/0.1/0.1 across categories), not
taken from the code's output.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from milr.benchmarks import BENCHMARKS
from milr.benchmarks.base import BenchmarkError, ImageItem
from milr.benchmarks.oracle import OracleVerdict, oracle_verdict, recipe_verdict
from milr.cards import CriticCard
from milr.cli import main
from milr.eval import evaluate
from milr.export import export_run
from milr.interfaces import Critic
from milr.records import RunRecord
from milr.recipe import load_recipe
from milr.runner import run_recipe


# ---------------------------------------------------------------------------------------------
# The acceptance round trip: a tiny MiniMUG oracle run, exported to GenEval's layout, scored back
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minimug_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run_recipe("quickstart-oracle", ["prompts.per_tag=1", "prompts.limit=3", "prompts.images_per_prompt=2",
                                            "search.steps=1", f"run.output_dir={out}"], progress=False, log=lambda s: None)


def test_run_records_image_index_and_oracle_flag(minimug_run):
    rec = RunRecord(minimug_run)
    results = rec.results()
    assert len(results) == 6
    assert [r["metadata"]["image_index"] for r in results] == [0, 1] * 3
    assert [r["id"].rsplit("#", 1)[1] for r in results] == ["0", "1"] * 3
    manifest = rec.manifest()
    assert manifest["oracle"] is True and "world_oracle" in manifest["oracle_reasons"][0]
    assert (minimug_run / "summary.md").read_text().startswith("> **Oracle run**")


def test_geneval_export_layout_and_eval_round_trip(minimug_run, tmp_path):
    x, y = tmp_path / "X", tmp_path / "Y"
    prov = export_run(minimug_run, "geneval", x)
    names = sorted(p.relative_to(x).as_posix() for p in x.rglob("*") if p.is_file())
    assert names == ["00000/metadata.jsonl", "00000/samples/0000.png", "00000/samples/0001.png",
                     "00001/metadata.jsonl", "00001/samples/0000.png", "00001/samples/0001.png",
                     "00002/metadata.jsonl", "00002/samples/0000.png", "00002/samples/0001.png", "milr_export.json"]
    results = RunRecord(minimug_run).results()
    # metadata.jsonl is that prompt's JSON line (as GenEval's evaluator json.load()s it), without milr's keys
    md0 = json.loads((x / "00000" / "metadata.jsonl").read_text())
    assert md0 == {k: v for k, v in results[0]["metadata"].items() if k != "image_index"}
    assert (x / "00001" / "samples" / "0001.png").read_bytes() == (minimug_run / results[3]["images"]["final"]).read_bytes()
    assert prov["oracle"] is True and prov["images"] == 6

    summary = evaluate(x, "[{name: world_oracle, mode: binary}]", y, n_resamples=200)
    lines = [json.loads(line) for line in (y / "results.jsonl").read_text().splitlines()]
    got = {(ln["file"].split("/")[0], ln["image_index"]): ln["scores"]["world_oracle"] for ln in lines}
    want = {(f"{i // 2:05d}", r["metadata"]["image_index"]): r["final"]["eval"]["world_oracle"] for i, r in enumerate(results)}
    assert got == want  # identical per-image verdicts
    run_summary = json.loads((minimug_run / "summary.json").read_text())
    agg = summary["critics"]["world_oracle"]
    assert agg["overall"]["mean"] == run_summary["overall"]["eval:world_oracle_final"]
    for tag, row in run_summary["by_tag"].items():
        assert agg["by_tag"][tag]["mean"] == row["eval:world_oracle_final"]
        assert agg["by_tag"][tag]["n"] == 2  # averaged over images, not prompts
    assert summary["layout"] == "geneval" and summary["oracle"]["label"] == "yes"
    assert "| world_oracle | yes |" in (y / "summary.md").read_text()


def test_eval_of_run_folder_initial_images_and_cli(minimug_run, tmp_path, capsys):
    assert main(["eval", str(minimug_run), "--critics", "[{name: world_oracle, mode: binary}]", "--out", str(tmp_path / "E"),
                 "--which", "initial"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "E" / "results.jsonl").read_text().splitlines()]
    results = RunRecord(minimug_run).results()
    assert [ln["scores"]["world_oracle"] for ln in lines] == [r["initial"]["eval"]["world_oracle"] for r in results]
    assert {ln["which"] for ln in lines} == {"initial"}
    summary = json.loads((tmp_path / "E" / "summary.json").read_text())
    assert summary["layout"] == "run" and summary["benchmark"]["name"] == "geneval"


def test_eval_critics_from_a_recipe_or_a_yaml_file(minimug_run, tmp_path):
    # a recipe gives its evaluate: critics (quickstart-oracle: world_oracle, binary)
    s = evaluate(minimug_run, "quickstart-oracle", tmp_path / "A", n_resamples=50)
    inline = evaluate(minimug_run, "[{name: world_oracle, mode: binary}]", tmp_path / "B", n_resamples=50)
    assert list(s["critics"]) == ["world_oracle"] and s["critics"] == inline["critics"]
    f = tmp_path / "critics.yaml"
    f.write_text("- {name: world_oracle, mode: partial}\n- {name: world_oracle, mode: binary}\n")
    two = evaluate(minimug_run, str(f), tmp_path / "C", n_resamples=50)
    assert list(two["critics"]) == ["world_oracle", "world_oracle#1"]
    assert two["critics"]["world_oracle#1"] == inline["critics"]["world_oracle"]
    from milr.recipe import RecipeError

    with pytest.raises(RecipeError, match="mode"):
        evaluate(minimug_run, "[{name: world_oracle, mode: sometimes}]", tmp_path / "D")


def test_compare_table_has_oracle_column(minimug_run):
    from milr.compare import format_table, summarize_runs

    table = summarize_runs({"milr": minimug_run}, metric="world_oracle", n_resamples=100)
    assert table["rows"]["milr"]["oracle"] == "yes" and table["rows"]["base"]["oracle"] == "no"
    md = format_table(table)
    assert "| strategy | oracle |" in md and "| milr | yes |" in md


# ---------------------------------------------------------------------------------------------
# Layouts from hand-made run folders
# ---------------------------------------------------------------------------------------------
def fake_run(tmp_path: Path, tasks: list[tuple[str, str, dict]], suite: str) -> Path:
    """A run folder as the runner writes it: manifest, results.jsonl, one 4x4 PNG per task."""
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"recipe": {"prompts": {"suite": suite}, "critics": []},
                                                   "oracle": False, "oracle_reasons": [], "oracle_proxies": []}))
    lines = []
    for i, (tid, prompt, md) in enumerate(tasks):
        for which in ("initial", "final"):
            Image.fromarray(np.full((4, 4, 3), 10 * i + (which == "final"), np.uint8)).save(run / "images" / f"{i:05d}_{which}.png")
        lines.append(json.dumps({"index": i, "id": tid, "prompt": prompt, "metadata": md,
                                 "images": {k: f"images/{i:05d}_{k}.png" for k in ("initial", "final")}}))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_t2i_compbench_export_names_and_read_back(tmp_path):
    md = lambda tag, k: {"tag": tag, "category": tag, "image_index": k}  # noqa: E731
    run = fake_run(tmp_path, [("t2i-color-000#0", "a green bench and a blue bowl", md("color", 0)),
                              ("t2i-color-000#1", "a green bench and a blue bowl", md("color", 1)),
                              ("t2i-spatial-000#0", "a giraffe next to a lamp", md("spatial", 0))], "t2i-compbench")
    out = tmp_path / "T"
    export_run(run, "t2i-compbench", out)
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "a giraffe next to a lamp_000002.png", "a green bench and a blue bowl_000000.png",
        "a green bench and a blue bowl_000001.png"]
    assert (out / "samples" / "a green bench and a blue bowl_000001.png").read_bytes() == (run / "images" / "00001_final.png").read_bytes()
    items = BENCHMARKS["t2i-compbench"].read(out)
    assert [(it.tag, it.prompt_id, it.image_index) for it in items] == [
        ("spatial", "t2i-spatial-000", 2), ("color", "t2i-color-000", 0), ("color", "t2i-color-000", 1)]
    bad = fake_run(tmp_path / "b", [("x", "a cat_dog", {"tag": "color"})], "t2i-compbench")
    with pytest.raises(BenchmarkError, match="must not contain '_'"):
        export_run(bad, "t2i-compbench", tmp_path / "T2")


def test_wise_export_names_one_image_per_prompt(tmp_path):
    md = lambda pid, k: {"tag": "culture", "prompt_id": pid, "image_index": k}  # noqa: E731
    run = fake_run(tmp_path, [("wise-0001#0", "p1", md(1, 0)), ("wise-0001#1", "p1", md(1, 1)),
                              ("wise-0401#0", "p2", md(401, 0)), ("wise-0401#1", "p2", md(401, 1))], "wise")
    with pytest.raises(BenchmarkError, match="one image per prompt"):
        export_run(run, "wise", tmp_path / "W")
    export_run(run, "wise", tmp_path / "W2", image_index=1, which="initial")
    assert sorted(p.name for p in (tmp_path / "W2").iterdir()) == ["1.png", "401.png", "milr_export.json"]
    assert (tmp_path / "W2" / "401.png").read_bytes() == (run / "images" / "00003_initial.png").read_bytes()
    items = BENCHMARKS["wise"].read(tmp_path / "W2")
    assert [(it.prompt_id, it.tag) for it in items] == [("wise-0001", "culture"), ("wise-0401", "time")]
    assert items[1].metadata["explanation"].startswith("The model should show the Sydney Opera House")


def test_export_refuses_non_empty_out_and_unknown_format(tmp_path, capsys):
    run = fake_run(tmp_path, [("a", "a photo of a cat", {"tag": "single_object", "include": [{"class": "cat", "count": 1}]})], "geneval")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(run), "--format", "geneval", "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"milr: benchmark error: output folder {tmp_path / 'full'} is not empty (choose another --out, or pass --force)"]
    with pytest.raises(BenchmarkError, match="unknown --format"):
        export_run(run, "parti", tmp_path / "o")


# ---------------------------------------------------------------------------------------------
# Aggregation, hand-computed
# ---------------------------------------------------------------------------------------------
def items_for(tags: list[str], **md) -> list[ImageItem]:
    return [ImageItem(Path(f"{i}.png"), "p", {"tag": t, **md}, f"p{i // 2}", i % 2) for i, t in enumerate(tags)]


def test_geneval_overall_is_mean_of_task_means_over_images():
    tags = ["single_object"] * 4 + ["two_object"] * 2
    scores = [1, 0, 1, 1, 0, 1]
    agg = BENCHMARKS["geneval"].aggregate(items_for(tags), [float(s) for s in scores], n_resamples=200)
    assert agg["by_tag"]["single_object"]["mean"] == 0.75 and agg["by_tag"]["two_object"]["mean"] == 0.5
    assert agg["overall"]["mean"] == pytest.approx(0.625)  # not the image mean 4/6
    assert agg["correct_images"] == pytest.approx(4 / 6)
    assert agg["correct_prompts"] == pytest.approx(3 / 3)  # p0 (1,0), p1 (1,1), p2 (0,1): each has a correct image
    assert agg["overall"]["low"] <= 0.625 <= agg["overall"]["high"]
    assert any("tags absent" in n for n in agg["notes"])


def test_wise_overall_uses_category_weights_and_drops_unparsed():
    cats = ["culture", "culture", "time", "space", "biology", "physics", "chemistry", "chemistry"]
    scores = [0.25, 0.75, 0.25, 1.0, 0.0, 0.5, 1.0, None]  # None: an unparsable judge answer
    agg = BENCHMARKS["wise"].aggregate(items_for(cats), scores, n_resamples=200)
    want = 0.4 * 0.5 + 0.167 * 0.25 + 0.133 * 1.0 + 0.1 * 0.0 + 0.1 * 0.5 + 0.1 * 1.0
    assert want == pytest.approx(0.52475)
    assert agg["overall"]["mean"] == pytest.approx(want)
    assert agg["by_tag"]["culture"]["mean"] == 0.5 and agg["n_dropped"] == 1
    partial = BENCHMARKS["wise"].aggregate(items_for(cats[:2]), scores[:2], n_resamples=50)
    assert partial["overall"] is None and any("missing: time" in n for n in partial["notes"])


def test_t2i_compbench_per_category_means_and_milr_overall():
    cats = ["color", "color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy"]
    scores = [0.5, 0.75, 0.2, 0.4, 0.0, 0.3, 0.35, 0.9]
    agg = BENCHMARKS["t2i-compbench"].aggregate(items_for(cats), scores, n_resamples=100)
    assert agg["by_tag"]["color"]["mean"] == 0.625 and agg["by_tag"]["numeracy"]["mean"] == 0.9
    assert agg["overall"]["mean"] == pytest.approx((0.625 + 0.2 + 0.4 + 0.0 + 0.3 + 0.35) / 6)  # numeracy not in it
    no_overall = BENCHMARKS["t2i-compbench"].aggregate(items_for(cats[:3]), scores[:3], n_resamples=50)
    assert no_overall["overall"] is None


class _Const(Critic):
    card = CriticCard(summary="test constant")

    def __init__(self, value: float = 0.5):
        self.value = value

    def score(self, images, prompts, metadata):
        import torch

        return torch.full((images.shape[0],), self.value)


class Peeker(_Const):
    """A critic that reads WISE's answer when ``peek`` is true (declared on its card)."""

    card = CriticCard(summary="reads the answer", extra={"privileged_args": {"peek": "explanation"}})

    def __init__(self, value: float = 0.5, peek: bool = False):
        super().__init__(value)
        self.peek = peek


def test_eval_reads_t2i_layout_categories_from_file_names(tmp_path):
    samples = tmp_path / "L" / "samples"
    samples.mkdir(parents=True)
    for n, prompt in enumerate(["a green bench and a blue bowl", "a giraffe next to a lamp"]):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(samples / f"{prompt}_{n:06d}.png")
    # two critics stand in for two categories' scorers through the suite card's declaration
    crit = "[{name: 'test_eval_export:_Const', value: 0.2}, {name: 'test_eval_export:Peeker', value: 0.9}]"
    s = evaluate(tmp_path / "L", crit, tmp_path / "E", n_resamples=50)
    assert s["layout"] == "t2i-compbench" and s["benchmark"]["name"] == "t2i-compbench"
    assert s["critics"]["test_eval_export:_Const"]["by_tag"]["color"]["mean"] == pytest.approx(0.2)
    assert s["oracle"]["label"] == "unknown"  # images made outside milr
    assert "official (each category's scorer)" not in s["critics"]  # no declared scorer among the critics


def test_official_t2i_row_takes_each_category_scorer():
    from milr.eval import category_scorer_scores

    items = items_for(["color", "spatial", "color", "numeracy"])
    scores = {"t2i_blip_vqa": [0.1, 0.2, 0.3, 0.4], "t2i_spatial": [0.5, 0.6, 0.7, 0.8]}
    # color -> BLIP-VQA, spatial -> the spatial rule (the suite card's scorers); numeracy has none here
    assert category_scorer_scores(BENCHMARKS["t2i-compbench"], items, scores) == [0.1, 0.6, 0.3, None]
    assert category_scorer_scores(BENCHMARKS["t2i-compbench"], items, {"t2i_blip_vqa": [0.1] * 4}) is None
    assert category_scorer_scores(BENCHMARKS["geneval"], items, scores) is None  # one scorer for every category


def test_dpg_bench_scoring_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "D").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "D" / "a.png")
    (tmp_path / "p.jsonl").write_text(json.dumps({"file": "a.png", "prompt": "dense", "metadata": {"benchmark": "dpg-bench"}}) + "\n")
    code = main(["eval", str(tmp_path / "D"), "--prompts", str(tmp_path / "p.jsonl"), "--critics",
                 "[{name: 'test_eval_export:_Const'}]", "--out", str(tmp_path / "E")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("milr: benchmark error: DPG-Bench cannot be scored: its question file dpg_bench/dpg_bench.csv")
    assert not (tmp_path / "E").exists()  # refused before any critic was built or anything written
    # plain means on the same images still work
    s = evaluate(tmp_path / "D", "[{name: 'test_eval_export:_Const', value: 0.25}]", tmp_path / "E2",
                 prompts=tmp_path / "p.jsonl", benchmark="none", n_resamples=50)
    assert s["critics"]["test_eval_export:_Const"]["overall"]["mean"] == 0.25


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--critics", "[{name: world_oracle}]", "--out", str(tmp_path / "E")]) == 2
    assert capsys.readouterr().err.strip() == f"milr: benchmark error: target {tmp_path / 'nope'} is not a folder"
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty"), "--critics", "[{name: world_orcle}]", "--out", str(tmp_path / "E")]) == 2
    assert "did you mean 'world_oracle'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The oracle rule
# ---------------------------------------------------------------------------------------------
def test_oracle_flagged_and_not_flagged_cases():
    flagged = recipe_verdict(load_recipe("quickstart-oracle").to_dict())
    assert flagged.oracle is True and flagged.label() == "yes"
    learned = load_recipe("quickstart-oracle", ["critics.0={name: world_pref}"]).to_dict()
    assert recipe_verdict(learned).label() == "no"  # a learned critic on the world: not the scorer
    # the YOLO detector with GenEval's rules on GenEval prompts: labelled a proxy, never flagged
    proxy = oracle_verdict([{"name": "detector"}], "geneval", ["colors"])
    assert proxy.oracle is False and proxy.label() == "proxy" and "GenEval-style proxy" in proxy.proxies[0]
    assert oracle_verdict([{"name": "geneval"}], "geneval", ["colors"]).oracle is True
    # T2I-CompBench: a category's own scorer flags runs on that category only
    assert oracle_verdict([{"name": "t2i_blip_vqa"}], "t2i-compbench", ["color"]).oracle is True
    assert oracle_verdict([{"name": "t2i_blip_vqa"}], "t2i-compbench", ["non_spatial"]).oracle is False
    assert oracle_verdict([{"name": "t2i_clipscore"}], "t2i-compbench", ["non_spatial"]).oracle is True
    # inside an ensemble the scorer still counts
    ens = [{"name": "ensemble", "members": [{"name": "clip_score"}, {"name": "world_oracle", "mode": "partial"}]}]
    assert oracle_verdict(ens, "minimug-world", ["colors"]).oracle is True
    # WISE: the judge is the scorer; a critic reading the privileged answer is flagged for that reason
    assert oracle_verdict([{"name": "wise_judge"}], "wise", ["culture"]).oracle is True
    answer = oracle_verdict([{"name": "wise_judge", "use_explanation": True}], "wise", ["culture"])
    assert any("reads the privileged field 'explanation'" in r for r in answer.reasons)
    assert not any("privileged" in r for r in oracle_verdict([{"name": "wise_judge"}], "wise", ["culture"]).reasons)
    # a judge shown the answer on prompts of another suite that carry it is flagged for that alone
    assert oracle_verdict([{"name": "wise_judge", "use_explanation": True}], None, [], ["explanation"]).oracle is True
    peek = oracle_verdict([{"name": "test_eval_export:Peeker", "peek": True}], "wise", ["culture"])
    assert peek.oracle is True and "privileged field 'explanation'" in peek.reasons[0]
    assert oracle_verdict([{"name": "test_eval_export:Peeker"}], "wise", ["culture"]).oracle is False
    # prompts from a file with no benchmark: cannot tell
    assert oracle_verdict([{"name": "world_oracle"}], None).label() == "unknown"
    assert OracleVerdict.from_manifest({}).label() == "unknown"


def test_oracle_is_read_from_prompt_metadata_benchmark_for_inline_prompts():
    inline = [{"prompt": "p", "metadata": {"tag": "time", "benchmark": "wise", "explanation": "x", "privileged": ["explanation"]}}]
    data = {"model": {"name": "minimug"}, "critics": [{"name": "test_eval_export:Peeker", "peek": True}],
            "search": {"name": "generate"}, "prompts": {"inline": inline}}
    v = recipe_verdict(load_recipe(data).to_dict())
    assert v.oracle is True and any("explanation" in r for r in v.reasons)
    # the benchmark named in the metadata gives the suite whose card names the scorer
    scorer = {**data, "critics": [{"name": "geneval"}], "prompts": {"inline": [{"prompt": "p", "metadata": {"tag": "colors", "benchmark": "geneval"}}]}}
    assert "suite 'geneval'" in recipe_verdict(load_recipe(scorer).to_dict()).reasons[0]
