"""Recipes: validation errors name the file, key path, what was found and what is allowed."""

import textwrap

import pytest
import yaml

from milr.recipe import RecipeError, apply_overrides, load_recipe

GOOD = {
    "model": {"name": "doubles:CountingToyMUG"},
    "critics": [{"name": "doubles:BrightnessCritic", "weight": 1.0}],
    "search": {"name": "best_of_n", "n": 2},
    "prompts": {"inline": ["a red circle", "two blue squares"]},
    "run": {"seed": 0, "output_dir": "runs"},
}


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return p


def bad(tmp_path, mutate, overrides=()):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, list(overrides))
    msg = str(e.value)
    assert str(path) in msg or "command line" in msg, msg  # every error names where it is
    return msg


def test_good_recipe_loads(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.search.args == {"n": 2} and r.critics[0].weight == 1.0


def test_misspelt_critic_name_suggests_and_names_path(tmp_path):
    msg = bad(tmp_path, lambda d: d["critics"].insert(0, {"name": "clip_scor"}))
    assert "critics.0.name" in msg and "clip_score" in msg and "did you mean" in msg


def test_wrong_type_names_key_and_expected_type(tmp_path):
    msg = bad(tmp_path, lambda d: d["search"].update(n="ten"))
    assert "search.n" in msg and "expected an integer" in msg and "'ten'" in msg


def test_unknown_search_argument(tmp_path):
    msg = bad(tmp_path, lambda d: d["search"].update(nn=3))
    assert "search.nn" in msg and "unknown argument" in msg and "'n'" in msg


def test_unknown_top_level_key_did_you_mean(tmp_path):
    msg = bad(tmp_path, lambda d: d.update(serach=d.pop("search")))
    assert "serach" in msg and "did you mean 'search'" in msg
    assert "search: missing required key" in msg


def test_missing_model(tmp_path):
    msg = bad(tmp_path, lambda d: d.pop("model"))
    assert "model: missing required key" in msg


def test_two_prompt_sources(tmp_path):
    msg = bad(tmp_path, lambda d: d["prompts"].update(suite="minimug-world"))
    assert "prompts" in msg and "exactly one of suite, file, inline" in msg


def test_bad_dtype_lists_allowed(tmp_path):
    msg = bad(tmp_path, lambda d: d["run"].update(dtype="float64"))
    assert "run.dtype" in msg and "'float32'" in msg and "'bfloat16'" in msg


def test_bad_device(tmp_path):
    msg = bad(tmp_path, lambda d: d["run"].update(device="gpu"))
    assert "run.device" in msg and "cuda" in msg


def test_negative_budget(tmp_path):
    msg = bad(tmp_path, lambda d: d["run"].update(budget={"critic_calls": -1}))
    assert "run.budget.critic_calls" in msg and "greater than 0" in msg


def test_unknown_budget_key(tmp_path):
    msg = bad(tmp_path, lambda d: d["run"].update(budget={"critic_call": 5}))
    assert "run.budget.critic_call" in msg and "did you mean 'critic_calls'" in msg


def test_misspelt_model_name(tmp_path):
    msg = bad(tmp_path, lambda d: d.update(model={"name": "minimugg"}))
    assert "model.name" in msg and "did you mean 'minimug'" in msg


def test_unknown_suite(tmp_path):
    msg = bad(tmp_path, lambda d: d.update(prompts={"suite": "minimug-wrold"}))
    assert "prompts.suite" in msg and "minimug-world" in msg


def test_bad_tag(tmp_path):
    msg = bad(tmp_path, lambda d: d.update(prompts={"suite": "geneval", "tags": ["countin"]}))
    assert "prompts.tags.0" in msg and "'counting'" in msg


def test_empty_critics(tmp_path):
    msg = bad(tmp_path, lambda d: d.update(critics=[]))
    assert "critics" in msg and "at least 1" in msg


def test_missing_prompt_file(tmp_path):
    msg = bad(tmp_path, lambda d: d.update(prompts={"file": "nope.txt"}))
    assert "prompts.file" in msg and "nope.txt" in msg


def test_metadata_critic_with_plain_prompts(tmp_path):
    msg = bad(tmp_path, lambda d: d["critics"].append({"name": "world_oracle"}))
    assert "critics.1.name" in msg and "needs prompt metadata" in msg


def test_override_type_error_names_key(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["search.n=ten"])
    assert "search.n" in str(e.value) and "expected an integer" in str(e.value)


def test_bad_override_syntax_and_index():
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides(GOOD, ["search.n"])
    with pytest.raises(RecipeError, match="out of range"):
        apply_overrides(GOOD, ["critics.5.weight=2"])


def test_invalid_yaml(tmp_path):
    p = write(tmp_path, "model: {name: x\ncritics: [")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_extends_missing_file(tmp_path):
    p = write(tmp_path, {"extends": "no_such_base.yaml", **GOOD})
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert "extends" in str(e.value) and "no such recipe" in str(e.value)


def test_extends_and_overrides_merge(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, {"extends": "base.yaml", "search": {"n": 5}, "run": {"seed": 7}}, "child.yaml")
    r = load_recipe(child, ["critics.0.weight=2.5", "run.budget.critic_calls=9"])
    assert r.search.name == "best_of_n" and r.search.args["n"] == 5  # dicts merge
    assert r.run.seed == 7 and r.run.output_dir == "runs"
    assert r.critics[0].weight == 2.5 and r.run.budget.critic_calls == 9


def test_circular_extends(tmp_path):
    write(tmp_path, {"extends": "b.yaml"}, "a.yaml")
    b = write(tmp_path, {"extends": "a.yaml"}, "b.yaml")
    with pytest.raises(RecipeError, match="circular"):
        load_recipe(b)


def test_errors_raised_before_any_model_loads(tmp_path):
    import doubles
    from milr.runner import run_recipe

    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["critics"][0]["name"] = "clip_scor"
    before = doubles.CountingToyMUG.constructed
    with pytest.raises(RecipeError):
        run_recipe(write(tmp_path, data))
    assert doubles.CountingToyMUG.constructed == before


def test_several_errors_reported_together(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["run"]["dtype"] = "float64"
    data["run"]["device"] = "gpu"
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, data))
    assert "run.dtype" in str(e.value) and "run.device" in str(e.value)


def test_shipped_recipes_validate():
    from milr.recipe import shipped_recipes

    names = shipped_recipes()
    assert "quickstart" in names
    for name, path in names.items():
        if name.startswith(("train-", "distill-")):
            continue  # training configs (milr train / train-critic) have their own schema
        load_recipe(path)
