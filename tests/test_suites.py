"""Benchmark prompt suites shipped in milr/data: counts match the upstream files, attribution, recipes.

Counts and id ranges are those of docs/benchmarks.md and each SOURCE.md (T2I-CompBench 300 per
val category, WISE 1000 legacy prompts in six id ranges, DPG-Bench 1065 prompts), not the loaders'.
"""

import fnmatch
import hashlib
import re
import tomllib
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from milr.cli import main
from milr.prompts import load_tasks
from milr.recipe import RecipeError, load_recipe
from milr.registry import CRITICS, MODELS, SUITES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "milr" / "data"


def suite(name, **kw):
    return SUITES.get(name)(**{"split": "test", "tags": None, **kw})


def test_t2i_compbench_val_counts_and_metadata():
    items = suite("t2i-compbench")
    assert Counter(i["metadata"]["tag"] for i in items) == {
        c: 300 for c in ("color", "shape", "texture", "spatial", "non_spatial", "complex")}
    plus = suite("t2i-compbench", tags=["numeracy", "3d_spatial"])
    assert Counter(i["metadata"]["tag"] for i in plus) == {"numeracy": 300, "3d_spatial": 300}
    assert len({i["id"] for i in items}) == 1800 and len({i["seed"] for i in items}) == 1800
    assert all("\r" not in i["prompt"] and "_" not in i["prompt"] and i["prompt"] == i["prompt"].strip() for i in items)
    first = items[0]
    assert first["prompt"] == "a green bench and a blue bowl" and first["metadata"]["category"] == "color"
    # complex splits into 58 spatial + 212 action + 30 spatial-and-action prompts (SOURCE.md)
    subsets = Counter(i["metadata"]["complex_subset"] for i in items if i["metadata"]["tag"] == "complex")
    assert subsets == {"spatial": 58, "action": 212, "spatialaction": 30}
    # the colour file before upstream's 2025-09-03 de-duplication: 300 lines, 295 distinct prompts
    old = suite("t2i-compbench", split="val-before-2025-09-03", tags=["color"])
    assert len(old) == 300 and len({i["prompt"] for i in old}) == 295
    assert [i["prompt"] for i in suite("t2i-compbench", tags=["shape"])] == \
        [i["prompt"] for i in suite("t2i-compbench", split="val-before-2025-09-03", tags=["shape"])]
    with pytest.raises(ValueError, match="unknown split"):
        suite("t2i-compbench", split="train")


def test_wise_legacy_ids_categories_and_privileged_answer():
    items = suite("wise")
    assert len(items) == 1000
    ids = [i["metadata"]["prompt_id"] for i in items]
    assert ids == list(range(1, 1001))
    assert Counter(i["metadata"]["tag"] for i in items) == {
        "culture": 400, "time": 167, "space": 133, "biology": 100, "physics": 100, "chemistry": 100}
    # WISE's own Category strings agree with the id ranges of docs/benchmarks.md
    pairs = {(i["metadata"]["tag"], i["metadata"]["category"]) for i in items}
    assert pairs == {("culture", "Cultural knowledge"), ("time", "time"), ("space", "Space"), ("biology", "Biology"),
                     ("physics", "Physical Knowledge"), ("chemistry", "Chemistry")}
    first = items[0]
    assert first["id"] == "wise-0001" and first["prompt"] == "Traditional food of the Mid-Autumn Festival"
    assert "mooncakes" in first["metadata"]["explanation"] and first["metadata"]["privileged"] == ["explanation"]
    assert Counter(i["metadata"]["subcategory"] for i in items if i["metadata"]["tag"] == "biology") == {"State": 52, "Behavior": 48}
    rewrite = suite("wise", split="rewrite")
    assert [i["metadata"]["prompt_id"] for i in rewrite] == ids and rewrite[0]["prompt"] != first["prompt"]
    assert SUITES.card("wise").privileged == ("explanation",)


def test_dpg_bench_prompts_and_missing_question_file_is_stated():
    items = suite("dpg-bench")
    assert len(items) == 1065 and len({i["metadata"]["item_id"] for i in items}) == 1065
    assert {"partiprompts94", "midjourney17", "whoops31"} <= {i["metadata"]["item_id"] for i in items}
    words = [len(i["prompt"].split()) for i in items]
    assert min(words) >= 30 and max(words) <= 140  # dense prompts, 37-130 words upstream
    card = SUITES.card("dpg-bench")
    assert "dpg_bench.csv" in card.summary and "dpg_bench.csv" in card.note
    assert "MISSING" in (DATA / "dpg-bench" / "SOURCE.md").read_text()


@pytest.mark.parametrize("folder", ["t2i-compbench", "wise", "dpg-bench"])
def test_shipped_files_match_their_source_md_checksums(folder):
    source = (DATA / folder / "SOURCE.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", source, re.M))
    shipped = sorted(p.name for p in (DATA / folder).iterdir() if p.name != "SOURCE.md")
    assert sorted(listed) == shipped
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / folder / name).read_bytes()).hexdigest() == digest, name
    assert "License" in source or "license" in source


def test_package_data_globs_cover_the_shipped_prompt_files():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = cfg["package-data"]["milr.data"]
    assert "milr.benchmarks" in cfg["packages"]
    files = [p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert files and not missing
    # read through the package resources, not ../shared
    assert resources.files("milr.data").joinpath("wise/natural_science.json").is_file()


def test_recipe_tags_are_checked_against_the_suite_card():
    r = load_recipe("quickstart-oracle", ["prompts.suite=t2i-compbench", "prompts.tags=[spatial]", "prompts.split=val"])
    tasks = load_tasks(r.prompts)
    assert len(tasks) == 2 and {t.metadata["tag"] for t in tasks} == {"spatial"}  # per_tag 2 from the recipe
    with pytest.raises(RecipeError, match=r"prompts.tags.0: found 'spatail'; allowed: .*'spatial'"):
        load_recipe("quickstart-oracle", ["prompts.suite=t2i-compbench", "prompts.tags=[spatail]"])


def test_images_per_prompt_gives_one_task_per_image_with_its_own_seed_and_id():
    base = load_tasks(load_recipe("quickstart-oracle", ["prompts.per_tag=1", "prompts.limit=2"]).prompts)
    tasks = load_tasks(load_recipe("quickstart-oracle", ["prompts.per_tag=1", "prompts.limit=2",
                                                         "prompts.images_per_prompt=4"]).prompts)
    assert [t.id for t in tasks] == [f"{b.id}#{k}" for b in base for k in range(4)]
    assert [t.metadata["image_index"] for t in tasks] == [0, 1, 2, 3] * 2
    assert [t.index for t in tasks] == list(range(8))
    assert len({t.seed for t in tasks}) == 8
    assert [t.seed for t in tasks[::4]] == [b.seed for b in base]  # image 0 keeps the prompt's seed
    assert all(t.prompt == b.prompt for b in base for t in tasks if t.id.startswith(b.id + "#"))
    with pytest.raises(RecipeError, match="images_per_prompt"):
        load_recipe("quickstart-oracle", ["prompts.images_per_prompt=0"])


@pytest.mark.parametrize("recipe,n,reason", [
    ("janus-pro-7b-geneval", 553, "'geneval' is the evaluation scorer"),
    ("janus-pro-7b-t2i-compbench", 1800, "'t2i_blip_vqa' is the evaluation scorer"),
    ("janus-pro-7b-wise", 1000, "'wise_judge' reads the privileged field 'explanation'"),
])
def test_janus_benchmark_recipes_pass_dry_run_without_loading_weights(recipe, n, reason, capsys, monkeypatch):
    import milr.runner

    def refuse(*a, **k):
        raise AssertionError("a dry run must not build the model or critics")

    monkeypatch.setattr(milr.runner, "build_model", refuse)
    monkeypatch.setattr(milr.runner, "build_critic", refuse)
    # Offline, the dry run's preflight resolves (never loads) every checkpoint the recipe names; none
    # is on this machine, so the hooks record what they were asked instead (proof that the dry run
    # checks weights without loading them).
    r = load_recipe(recipe)
    asked = []
    for registry, spec in [(MODELS, r.model), *[(CRITICS, c) for c in r.critics]]:
        cls = registry.get(spec.name)
        if hasattr(cls, "preflight"):
            monkeypatch.setattr(cls, "preflight", classmethod(lambda c, args, n=spec.name: asked.append(n)))
    assert main(["run", recipe, "--dry-run"]) == 0
    assert "janus_pro" in asked
    out = capsys.readouterr().out
    assert f"# dry run: recipe valid; {n} prompts; nothing loaded" in out
    assert "# oracle: yes" in out and reason in out
    assert r.model.name == "janus_pro" and r.run.device == "cuda"
    assert r.model.args["checkpoint"] == "deepseek-community/Janus-Pro-7B"  # the paper's model
