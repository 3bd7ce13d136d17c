"""Critic training with Lightning (milr.training) and using the result with no code (critics/trained.py).

Smoke sizes: a few dozen world examples, tiny networks, one or two epochs.
"""

import json
import math

import pytest
import torch
import yaml

import milr.critics  # noqa: F401  (the index declares 'trained')
from milr.registry import CRITICS
from milr.training.config import load_train_recipe
from milr.training.critic import train_critic
from milr.world.data import write_captions, write_pairwise, write_pointwise

TINY_MODEL = {"width": 4, "depth": 3, "text_dim": 8, "head_hidden": 16, "max_words": 16}
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "logger": "csv", "log_every_n_steps": 1}


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def pairwise_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairwise")
    data = write_pairwise(root / "data", 40, "train", seed=1)
    out = train_critic(
        {"task": "pairwise", "name": "tiny-pref", "output": str(root / "ckpt"), "data": {"train": str(data)},
         "model": TINY_MODEL, "train": TINY_TRAIN, "aliases": ["tiny-pref"]}
    )
    return out


def test_pairwise_checkpoint_holds_weights_config_and_card(pairwise_ckpt):
    files = {p.name for p in pairwise_ckpt.iterdir()}
    assert {"model.safetensors", "critic.json", "card.md", "recipe.yaml"} <= files
    info = json.loads((pairwise_ckpt / "critic.json").read_text())
    assert info["task"] == "pairwise" and info["loss"] == "bradley_terry"
    extra = info["card"]["extra"]
    # Validation split: 10% of 40 pairs; the card reports accuracy and calibration on it.
    assert extra["validation"]["n_pairs"] == 4
    assert 0.0 <= extra["validation"]["pairwise_accuracy"] <= 1.0
    cal = extra["calibration"]["all"]
    assert cal["n"] == 8 and cal["std"] >= 0 and set(cal["quantiles"]) == {"0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"}
    assert cal["quantiles"]["0.01"] <= cal["quantiles"]["0.5"] <= cal["quantiles"]["0.99"]
    summary = extra["training_data"]
    assert summary["train_examples"] == 36 and summary["val_examples"] == 4 and summary["image_size"] == 32
    assert sum(summary["train_tags"].values()) == 36
    assert extra["training"]["epochs_run"] == 2 and len(extra["training"]["history"]) == 2
    assert info["aliases"] == ["tiny-pref"]
    assert "pairwise_accuracy" in (pairwise_ckpt / "card.md").read_text()
    assert list((pairwise_ckpt / "logs").rglob("metrics.csv")), "Lightning's CSV logger wrote no metrics"


def test_trained_critic_from_registry_reproduces_training_net(pairwise_ckpt):
    from safetensors.torch import load_file

    from milr.critics.reward_net import RewardNet

    critic = CRITICS.build("trained", path=str(pairwise_ckpt))
    info = json.loads((pairwise_ckpt / "critic.json").read_text())
    net = RewardNet(dict(info["network"], _restoring=True))
    net.load_state_dict(load_file(str(pairwise_ckpt / "model.safetensors")))
    net.eval()
    x = _images(5)
    prompts = ["a photo of a red circle", "a photo of two squares", "a photo of a cross left of a circle",
               "a photo of a circle left of a cross", "a photo of a diamond"]
    with torch.no_grad():
        expected = net(x, net.tokenize(prompts))
    got = critic.score(x, prompts, [{}] * 5)
    assert got.shape == (5,)
    torch.testing.assert_close(got, expected)
    # Order-aware prompt encoder: swapping the objects of a relation changes the score.
    assert not torch.equal(critic.score(x[2:3], prompts[2:3]), critic.score(x[2:3], prompts[3:4]))
    assert critic.card.score_range == (-math.inf, math.inf)
    assert critic.card.input_size == 32


def test_trained_critic_is_differentiable(pairwise_ckpt):
    critic = CRITICS.build("trained", path=str(pairwise_ckpt))
    x = _images(2).requires_grad_(True)
    r = critic.score_differentiable(x, ["a photo of a circle"] * 2)
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pairwise_critic_used_from_a_recipe_by_the_runner(pairwise_ckpt, tmp_path):
    from milr.records import RunRecord
    from milr.runner import run_recipe

    recipe = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "trained", "path": str(pairwise_ckpt)}],
        "search": {"name": "best_of_n", "n": 2},
        "prompts": {"inline": ["a photo of a circle", "a photo of two squares"]},
        "run": {"seed": 0, "output_dir": str(tmp_path / "runs")},
    }
    run_dir = run_recipe(recipe, progress=False, log=lambda s: None)
    results = RunRecord(run_dir).results()
    assert len(results) == 2
    for res in results:
        # The trained critic was the search's only critic: the reward is its score.
        assert res["final"]["scores"]["trained"] == pytest.approx(res["final"]["reward"])
        assert math.isfinite(res["final"]["reward"]) and res["final"]["reward"] >= res["initial"]["reward"]


def test_user_critics_file_registers_a_name(pairwise_ckpt, tmp_path, monkeypatch):
    from milr.critics.trained import register_user_critics

    cfg = tmp_path / "critics.yaml"
    cfg.write_text(yaml.safe_dump({"my-pref": {"path": str(pairwise_ckpt), "batch_size": 3}}))
    assert register_user_critics(cfg) == ["my-pref"]
    assert CRITICS.card("my-pref").extra["training_data"]["train_examples"] == 36  # the checkpoint's own card
    x = _images(4)
    prompts = ["a photo of a circle"] * 4
    named = CRITICS.build("my-pref")
    assert named.batch_size == 3
    torch.testing.assert_close(named.score(x, prompts), CRITICS.build("trained", path=str(pairwise_ckpt)).score(x, prompts))
    # And from a recipe, validated against the registry like any critic.
    from milr.recipe import load_recipe

    r = load_recipe({"model": {"name": "toy_mug:ToyMUG"}, "critics": [{"name": "my-pref"}],
                     "search": {"name": "best_of_n", "n": 1}, "prompts": {"inline": ["a"]}})
    assert r.critics[0].name == "my-pref"
    # The default location is read through $MILR_CRITICS_FILE.
    cfg2 = tmp_path / "other.yaml"
    cfg2.write_text(yaml.safe_dump({"my-pref-2": {"path": str(pairwise_ckpt)}}))
    monkeypatch.setenv("MILR_CRITICS_FILE", str(cfg2))
    assert register_user_critics() == ["my-pref-2"]
    # Any critic with preset arguments, under a new name.
    cfg3 = tmp_path / "preset.yaml"
    cfg3.write_text(yaml.safe_dump({"dense-oracle": {"name": "world_oracle", "mode": "partial"}}))
    assert register_user_critics(cfg3) == ["dense-oracle"]
    assert CRITICS.build("dense-oracle").mode == "partial"
    cfg3.write_text(yaml.safe_dump({"typo": {"name": "world_oracel"}}))
    with pytest.raises(ValueError, match="did you mean 'world_oracle'"):
        register_user_critics(cfg3)


def test_user_critics_file_cannot_shadow_builtins(tmp_path, pairwise_ckpt):
    from milr.critics.trained import register_user_critics

    cfg = tmp_path / "critics.yaml"
    cfg.write_text(yaml.safe_dump({"clip_score": {"path": str(pairwise_ckpt)}}))
    with pytest.raises(ValueError, match="built-in critic name"):
        register_user_critics(cfg)
    cfg.write_text(yaml.safe_dump({"x": {"nope": 1}}))
    with pytest.raises(ValueError, match="expected"):
        register_user_critics(cfg)


TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 16, "layers": 1, "head_width": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}}


@pytest.mark.parametrize("variant", ["frozen", "finetune", "cnn+clip-text"])
def test_open_clip_backbones_from_a_local_config_and_weights(tmp_path, variant):
    from safetensors.torch import load_file, save_file

    from milr.critics.clip_score import load_open_clip

    cfg_file = tmp_path / f"tiny-oc-{variant.replace('+', '-')}.json"
    cfg_file.write_text(json.dumps(TINY_CLIP))
    clip, _, _ = load_open_clip(str(cfg_file))
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    data = write_pairwise(tmp_path / "data", 16, "train", seed=9)
    model = {"clip_model": str(cfg_file), "clip_pretrained": str(weights), "head_hidden": 16,
             "finetune": variant == "finetune"}
    model.update({"backbone": "cnn", "text_encoder": "clip", "width": 4, "depth": 3} if variant == "cnn+clip-text"
                 else {"backbone": "open_clip"})
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "out"), "data": {"train": str(data)},
                        "model": model, "train": dict(TINY_TRAIN, epochs=1, lr=1e-2)})
    state = load_file(str(out / "model.safetensors"))
    start = clip.state_dict()
    changed = any(not torch.equal(state["clip." + k], v) for k, v in start.items() if "clip." + k in state)
    assert changed == (variant == "finetune"), "frozen towers must keep the local weights; fine-tuned ones move"
    cfg_file.unlink()  # the checkpoint carries its open_clip architecture
    critic = CRITICS.build("trained", path=str(out))
    s = critic.score(_images(3), ["a photo of a red circle", "a photo of a square", "a photo of two crosses"])
    assert s.shape == (3,) and torch.isfinite(s).all()


def test_init_from_fine_tunes_a_trained_critic(pairwise_ckpt, tmp_path):
    data = write_pairwise(tmp_path / "data", 12, "train", seed=7)
    # lr 0: the fine-tuned critic must be the starting critic exactly (architecture, vocab and weights kept).
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "ft"), "data": {"train": str(data)},
                        "model": {"init_from": str(pairwise_ckpt), "width": 99}, "train": dict(TINY_TRAIN, epochs=1, lr=0.0)})
    info = json.loads((out / "critic.json").read_text())
    assert info["network"]["width"] == TINY_MODEL["width"]
    assert info["card"]["extra"]["training"]["init_from"] == str(pairwise_ckpt)
    x, prompts = _images(4), ["a photo of a red circle and a blue square"] * 4
    torch.testing.assert_close(CRITICS.build("trained", path=str(out)).score(x, prompts),
                               CRITICS.build("trained", path=str(pairwise_ckpt)).score(x, prompts))


def test_pointwise_labels_bce_and_scores_mse(tmp_path):
    data = write_pointwise(tmp_path / "data", 40, "train", seed=2)
    bce = train_critic({"task": "pointwise", "output": str(tmp_path / "bce"), "data": {"train": str(data)},
                        "model": dict(TINY_MODEL, text_encoder="bow"), "train": TINY_TRAIN})
    info = json.loads((bce / "critic.json").read_text())
    assert info["loss"] == "bce" and info["card"]["score_range"] == [0.0, 1.0]
    assert set(info["card"]["extra"]["validation"]) == {"spearman", "n", "accuracy"}
    s = CRITICS.build("trained", path=str(bce)).score(_images(6), ["a photo of a square"] * 6)
    assert ((s > 0) & (s < 1)).all()

    mse = train_critic({"task": "pointwise", "output": str(tmp_path / "mse"),
                        "data": {"train": str(data), "target": "score"}, "model": TINY_MODEL, "train": TINY_TRAIN})
    info = json.loads((mse / "critic.json").read_text())
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    train_scores = torch.tensor([r["score"] for r in rows])
    assert info["loss"] == "mse"
    # Targets are standardised for training and mapped back: the critic speaks the data's scale.
    assert abs(info["target_mean"] - float(train_scores.mean())) < 0.1
    cal = info["card"]["extra"]["calibration"]["all"]
    assert abs(cal["mean"] - info["target_mean"]) < 3 * info["target_std"]


def test_contrastive_smoke_recipe_folder_loads_in_clip_score(tmp_path):
    out = train_critic("train-world-clip-smoke", [f"output={tmp_path / 'clip'}", f"export={tmp_path / 'export'}"])
    export = tmp_path / "export"
    assert {"open_clip_config.json", "open_clip_model.safetensors", "world_clip_smoke.json", "critic.json", "card.md"} == \
        {p.name for p in export.iterdir()}
    # The training data was generated from TRAIN-split world prompts only.
    from milr.world import all_prompts
    from milr.world.suite import is_train_prompt

    by_text = {md["prompt"]: md for tag in ("two_object", "counting", "colors", "position", "color_attr") for md in all_prompts(tag)}
    captions = [json.loads(x)["caption"] for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(captions) == 48 and all(is_train_prompt(by_text[c]) for c in captions if c in by_text)
    x = _images(3)
    prompts = ["a photo of a red circle", "a photo of a square", "a photo of two crosses"]
    via_clip = CRITICS.build("clip_score", arch=str(export)).score(x, prompts)
    via_trained = CRITICS.build("trained", path=str(export)).score(x, prompts)
    torch.testing.assert_close(via_clip, via_trained)
    assert ((via_clip >= -1) & (via_clip <= 1)).all()
    info = json.loads((export / "critic.json").read_text())
    assert info["card"]["score_range"] == [-1.0, 1.0]
    assert "matched_cosine" in info["card"]["extra"]["calibration"]


def test_pairwise_smoke_recipe_then_runner(tmp_path):
    from doubles import run_with_trained_critic

    out = train_critic("train-world-pref-smoke", [f"output={tmp_path / 'pref'}"])
    assert json.loads((out / "critic.json").read_text())["card"]["extra"]["training_data"]["val_examples"] == 8
    res = run_with_trained_critic(out, tmp_path, "a photo of three crosses")
    assert res["final"]["scores"]["trained"] == pytest.approx(res["final"]["reward"])


def test_distill_world_oracle_into_a_student(tmp_path):
    out = train_critic({
        "task": "distill", "output": str(tmp_path / "student"),
        "distill": {"teacher": {"name": "world_oracle", "mode": "partial"}, "n_train": 40, "n_test": 16, "seed": 0},
        "model": TINY_MODEL, "train": TINY_TRAIN,
    })
    info = json.loads((out / "critic.json").read_text())
    d = info["card"]["extra"]["distill"]
    assert d["teacher"] == {"name": "world_oracle", "mode": "partial"}
    assert d["n_train"] == 40 and d["n_heldout"] == 16 and d["heldout"].startswith("TEST-split")
    assert -1.0 <= d["spearman_heldout"] <= 1.0
    # The student was fitted on the teacher's scores, written as pointwise data.
    rows = [json.loads(x) for x in (out / "distill_data" / "teacher_scores.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert info["task"] == "pointwise" and info["loss"] == "mse"


def test_world_pairs_follow_and_violate_with_chosen_kinds(tmp_path):
    from milr.world.suite import is_train_prompt

    data = write_pairwise(tmp_path, 12, "train", tags=["color_attr", "position"], seed=3,
                          kind_weights={"swap_colors": 1e6, "swap_position": 1e6})
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    assert all(is_train_prompt(r["metadata"]) for r in rows)
    assert {r["kind"] for r in rows if r["tag"] == "color_attr"} <= {"swap_colors"}
    assert {r["kind"] for r in rows if r["tag"] == "position"} <= {"swap_position"}
    test_rows = [json.loads(x) for x in write_pairwise(tmp_path, 12, "test", tags=["colors"], seed=3,
                                                       file_name="t.jsonl").read_text().splitlines()]
    assert not any(is_train_prompt(r["metadata"]) for r in test_rows)
    with pytest.raises(ValueError, match="unknown violation kinds"):
        write_pairwise(tmp_path, 1, kind_weights={"upside_down": 1.0})


def test_identical_pairs_are_refused(tmp_path):
    data = write_pairwise(tmp_path / "data", 6, "train", seed=4)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for r in rows:
        r["rejected"] = r["chosen"]
    bad = tmp_path / "data" / "same.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match="0.693"):
        train_critic({"task": "pairwise", "output": str(tmp_path / "x"), "data": {"train": str(bad)},
                      "model": TINY_MODEL, "train": TINY_TRAIN})


def test_stall_and_swap_warnings():
    from milr.training.module import check_stall as _check_stall

    stalled = _check_stall("pairwise", [{"val_acc": 0.5}, {"val_acc": 0.505}])
    assert stalled and "0.693" in stalled[0]
    swapped = _check_stall("pairwise", [{"val_acc": 0.2}])
    assert swapped and "swapped" in swapped[0]
    assert _check_stall("pairwise", [{"val_acc": 0.5}, {"val_acc": 0.8}]) == []
    assert _check_stall("pairwise", [{"val_acc": 0.5}]) == []  # one validation is not "stayed"


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        load_train_recipe({"task": "regression", "output": "x", "data": {"train": "a.jsonl"}})
    with pytest.raises(ValueError, match="unknown keys"):
        load_train_recipe({"task": "pairwise", "output": "x", "data": {"train": "a.jsonl", "trian": 1}})
    with pytest.raises(ValueError, match="'output'"):
        load_train_recipe({"task": "pairwise", "data": {"train": "a.jsonl"}})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "image": "a.png", "label": 3}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'label' must be 0 or 1"):
        train_critic({"task": "pointwise", "output": str(tmp_path / "o"), "data": {"train": str(bad)}})
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a.png"}) + "\n")
    with pytest.raises(ValueError, match=r"missing fields \['rejected'\]"):
        train_critic({"task": "pairwise", "output": str(tmp_path / "o"), "data": {"train": str(bad)}})
    with pytest.raises(FileNotFoundError, match="not found"):
        CRITICS.build("trained", path=str(tmp_path / "nowhere"))


def test_recipe_file_overrides_and_relative_paths(tmp_path):
    data = write_pairwise(tmp_path / "data", 4, "train", seed=5)
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"task": "pairwise", "output": "out", "data": {"train": "data/pairs.jsonl"},
                                   "train": {"strategy": "ddp", "devices": 4}}))
    cfg = load_train_recipe(rec, ["train.epochs=3", "train.devices=1", "train.strategy=auto"])
    assert cfg["data"]["train"] == str(data)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["devices"] == 1 and cfg["train"]["strategy"] == "auto"
    assert load_train_recipe(rec)["train"]["strategy"] == "ddp"  # passed through to Lightning's Trainer
    # Paths given as overrides are relative to the working directory, not to the recipe file.
    assert load_train_recipe(rec, ["data.train=elsewhere/pairs.jsonl"])["data"]["train"] == "elsewhere/pairs.jsonl"


def test_ddp_strategy_passes_through_with_one_process(tmp_path):
    # Multi-GPU training is Lightning's: `devices` and `strategy: ddp` go to the Trainer unchanged.
    # Here one CPU process runs the DDP code path (process group, gathered validation metrics).
    data = write_pairwise(tmp_path / "data", 16, "train", seed=8)
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "ddp"), "data": {"train": str(data)},
                        "model": TINY_MODEL,
                        "train": dict(TINY_TRAIN, epochs=1, strategy="ddp", devices=1, accelerator="cpu")})
    history = json.loads((out / "critic.json").read_text())["card"]["extra"]["training"]["history"]
    assert len(history) == 1 and 0.0 <= history[0]["val_acc"] <= 1.0


def test_shipped_training_recipes_parse():
    for name in ("train-world-pref", "train-world-clip"):
        cfg = load_train_recipe(name)
        assert cfg["data"]["generate"]["n"] > 0 and cfg["export"].startswith("critics/weights/")


@pytest.mark.parametrize("name", ["world_pref", "world_clip"])
def test_shipped_world_critics_load(name):
    from milr.critics.trained import shipped_checkpoints

    if name not in shipped_checkpoints():
        pytest.skip(f"shipped weights for {name} not built yet (recipes/train-{name.replace('_', '-')}.yaml)")
    critic = CRITICS.build(name)
    info = json.loads((critic.folder / "critic.json").read_text())
    assert "figures" in info["card"]["extra"], "run benchmarks/world_critics.py --write-cards"
    s = critic.score(_images(2), ["a photo of a red circle"] * 2)
    assert s.shape == (2,) and torch.isfinite(s).all()


def _csv_rows(folder):
    import csv

    rows = []
    for f in sorted(folder.rglob("metrics.csv")):
        rows += [dict(r, _file=str(f)) for r in csv.DictReader(f.open())]
    return rows


def test_resume_continues_from_the_saved_step(tmp_path):
    data = write_pairwise(tmp_path / "data", 24, "train", seed=12)
    recipe = {"task": "pairwise", "output": str(tmp_path / "r"), "data": {"train": str(data)}, "model": TINY_MODEL,
              "train": dict(TINY_TRAIN, epochs=1, patience=0)}
    out = train_critic(recipe)
    seconds_1 = json.loads((out / "critic.json").read_text())["card"]["extra"]["training"]["seconds"]
    first = _csv_rows(out / "logs")
    steps_1 = [int(r["step"]) for r in first if r.get("train_loss")]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["milr_seconds"]
    assert 0 < saved <= seconds_1 + 1e-3
    out = train_critic(recipe, ["train.epochs=3"], resume=True)
    info = json.loads((out / "critic.json").read_text())["card"]["extra"]["training"]
    # Time over both sessions: the second continues the counter saved in the checkpoint, it does not restart it.
    assert info["resumed"] is True and info["seconds"] > saved
    # The history travels in the checkpoint: epoch 0 from the first run, epochs 1-2 from the second.
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2]
    per_epoch = info["history"][0]["step"]
    assert [h["step"] for h in info["history"]] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    second = [r for r in _csv_rows(out / "logs") if r["_file"] != first[0]["_file"] and r.get("train_loss")]
    assert second and min(int(r["step"]) for r in second) > max(steps_1)  # the curve continues, it does not restart
    from milr.errors import UserError

    with pytest.raises(UserError, match="nothing to resume"):
        train_critic(dict(recipe, output=str(tmp_path / "fresh")), resume=True)
    assert not (tmp_path / "fresh").exists()


def test_loggers_not_installed_are_a_clear_error(tmp_path):
    import importlib.util

    from milr.recipe import RecipeError

    for name, module in (("wandb", "wandb"), ("mlflow", "mlflow")):
        if importlib.util.find_spec(module):
            continue
        with pytest.raises(RecipeError, match=rf"train.logger: '{name}' needs the {name} package, which is not installed"):
            train_critic({"task": "pairwise", "output": str(tmp_path / "o"), "data": {"train": "nowhere.jsonl"},
                          "train": {"logger": ["csv", name]}})
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_cli_config_errors_are_one_line_with_did_you_mean(tmp_path, capsys):
    from milr.cli import main

    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"task": "pairwise", "output": str(tmp_path / "o"), "data": {"train": "x.jsonl"}}))
    for override, expect in (("train.epochz=1", "'train.epochz' (did you mean 'train.epochs'?)"),
                             ("train.epochs=ten", "train.epochs: expected"),
                             ("train.precision=16-mixd", "did you mean '16-mixed'?"),
                             ("task=pairwize", "did you mean 'pairwise'?")):
        assert main(["train-critic", str(rec), override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("milr: recipe error:") and expect in err[0], err
    assert not (tmp_path / "o").exists()


def _tiny_blip(folder):
    """A random BLIP (transformers BlipForImageTextRetrieval) with a 25-word vocabulary, saved locally."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    folder.mkdir(parents=True)
    words = "a an the photo of red blue green yellow purple circle square triangle cross diamond two three four left right above below and".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    cfg = BlipConfig(text_config=dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=40, bos_token_id=30, sep_token_id=3),
                     vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                        image_size=32, patch_size=8),
                     image_text_hidden_size=16)
    torch.manual_seed(0)
    BlipForImageTextRetrieval(cfg).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("variant", ["blip", "blip-finetune", "open_clip-cosine"])
def test_real_backbones_with_a_preference_head(tmp_path, variant):
    """BLIP (ImageReward style) and CLIP's scaled cosine (HPSv2/PickScore style), tiny random backbones saved locally."""
    import shutil

    from safetensors.torch import load_file, save_file

    from milr.critics.clip_score import load_open_clip

    data = write_pairwise(tmp_path / "data", 16, "train", seed=13)
    if variant.startswith("blip"):
        src = _tiny_blip(tmp_path / "blip-src")
        model = {"backbone": "blip", "blip_model": str(src), "head_hidden": 8, "finetune": variant == "blip-finetune"}
        start = {"blip.text." + k.removeprefix("text_encoder."): v for k, v in load_file(str(src / "model.safetensors")).items()
                 if k.startswith("text_encoder.")}
    else:
        src = tmp_path / "clip-src"
        src.mkdir()
        (src / "tiny.json").write_text(json.dumps(TINY_CLIP))
        clip, _, _ = load_open_clip(str(src / "tiny.json"))
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(src / "clip.safetensors"))
        model = {"backbone": "open_clip", "clip_model": str(src / "tiny.json"), "clip_pretrained": str(src / "clip.safetensors"),
                 "head": "cosine", "finetune": True}
        start = {"clip." + k: v for k, v in clip.state_dict().items()}
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "out"), "data": {"train": str(data)}, "model": model,
                        "train": dict(TINY_TRAIN, epochs=1, lr=1e-2, logger="none")})
    state = load_file(str(out / "model.safetensors"))
    moved = any(not torch.equal(state[k], v) for k, v in start.items() if k in state and v.is_floating_point())
    assert moved == (variant != "blip"), "a frozen backbone keeps its weights; a fine-tuned one moves"
    assert ("head.0.weight" in state) == (variant != "open_clip-cosine")
    shutil.rmtree(src)  # the checkpoint carries the backbone's architecture (and tokenizer vocabulary)
    critic = CRITICS.build("trained", path=str(out), requires_grad=True)
    x = _images(3).requires_grad_(True)
    s = critic.score(x, ["a photo of a red circle", "a photo of a square", "a photo of two crosses"])
    assert s.shape == (3,) and torch.isfinite(s).all()
    s.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_cosine_head_needs_a_fine_tuned_open_clip():
    from milr.recipe import RecipeError

    with pytest.raises(RecipeError, match="model.head: head cosine"):
        load_train_recipe({"task": "pairwise", "output": "x", "data": {"train": "a.jsonl"},
                           "model": {"backbone": "open_clip", "clip_model": "ViT-B-32", "head": "cosine"}})


def test_below_chance_warning_reads_the_kept_checkpoint():
    from milr.training.module import check_stall

    # The last epoch recovered but the kept checkpoint (best val_loss) is the swapped-looking one: warn.
    assert "kept checkpoint" in check_stall("pairwise", [{"val_acc": 0.2}, {"val_acc": 0.9}], kept_acc=0.2)[0]
    # The last epoch fell below chance but the kept checkpoint is good: no warning.
    assert check_stall("pairwise", [{"val_acc": 0.9}, {"val_acc": 0.2}], kept_acc=0.9) == []
