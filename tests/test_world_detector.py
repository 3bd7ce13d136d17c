"""The world detector: training recipe (smoke), labels, config errors, the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from milr import world
from milr.world import suite


def test_yolo_labels_are_the_scene_truth_in_yolo_format():
    from milr.training.detector import yolo_labels

    # A 10-px square with top-left (4, 6): box (4, 6)-(14, 16), centre (9, 11), on a 32-px canvas.
    scene = world.Scene([world.make_obj("square", "red", 4, 6, 10), world.make_obj("cross", "blue", 20, 18, 8)])
    lines = [[float(v) for v in line.split()] for line in yolo_labels(scene)]
    assert lines[0] == pytest.approx([1, 9 / 32, 11 / 32, 10 / 32, 10 / 32])
    assert lines[1] == pytest.approx([4, 24 / 32, 22 / 32, 8 / 32, 8 / 32])


def test_reading_labels_are_exact_on_rendered_scenes_and_tier_rough_objects():
    """labels=reading: a rendered scene's reading is its truth; a blob too small for a world object is
    read as a square with a low score, so it gets the rough tier (class 5 + shape), and under
    min_score nothing."""
    from milr.training.detector import DetectorData, class_names, reading_labels, yolo_labels

    cfg = DetectorData(labels="reading")
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = world.random_scene(rng)
        assert sorted(reading_labels(world.render(scene), cfg)) == sorted(yolo_labels(scene))
    blob = np.full((32, 32, 3), 255, np.uint8)
    blob[10:14, 10:14] = world.COLORS["red"]  # 4 px: under the world's 8-12 px objects
    (line,) = reading_labels(blob, cfg)
    assert int(line.split()[0]) == len(world.SHAPES) + world.SHAPES.index("square")
    assert class_names(cfg)[int(line.split()[0])] == "square/rough"
    assert reading_labels(blob, DetectorData(labels="reading", min_score=0.9)) == []
    one_tier = DetectorData(labels="reading", rough_below=None)
    assert class_names(one_tier) == world.SHAPES and int(reading_labels(blob, one_tier)[0].split()[0]) == 1


def test_morphed_objects_blend_two_shapes_and_need_reading_labels():
    """render_morphed keeps each object's colour near its box; a blend is named by the world's reading
    (so morph without labels=reading is a config error)."""
    from pydantic import ValidationError

    from milr.training.detector import DetectorData, reading_labels, render_morphed

    rng = np.random.default_rng(1)
    cfg = DetectorData(labels="reading", morph=1.0)
    read_as_other, n = 0, 0
    for _ in range(60):
        scene = world.random_scene(rng, n_objects=1)
        (obj,) = scene.objects
        img = render_morphed(scene, rng)
        x1, y1, x2, y2 = world.obj_box(obj)
        painted = np.argwhere((img != 255).any(-1))
        assert len(painted) and painted.min(0).tolist() >= [y1 - 1, x1 - 1] and painted.max(0).tolist() <= [y2, x2]
        lines = reading_labels(img, cfg)
        n += 1
        read_as_other += any(int(line.split()[0]) % len(world.SHAPES) != world.SHAPES.index(obj.shape) for line in lines)
    assert 0 < read_as_other < n  # a continuum: some blends read as the other shape, most as their own
    with pytest.raises(ValidationError, match="labels: reading"):
        DetectorData(morph=0.3)


def test_detector_config_errors_name_the_key(tmp_path):
    from milr.cli import main
    from milr.recipe import RecipeError
    from milr.training.detector import load_detector_config

    with pytest.raises(RecipeError, match=r"train\.epochz: unknown key; did you mean 'epochs'"):
        load_detector_config("train-world-detector", ["train.epochz=1"])
    with pytest.raises(RecipeError, match=r"train\.imgsz"):
        load_detector_config("train-world-detector", ["train.imgsz=50"])  # not a multiple of the stride 32
    for bad, key in (("model.arch=foo.txt", "model.arch"), ("model.arch=yolov99q.yaml", "model.arch"),
                     ("model.arch=/no/such.pt", "model.arch"), ("train.device=gpu", "train.device"),
                     ("data.reconstruct=nan", "data.reconstruct")):
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_detector_config("train-world-detector", [bad])
    assert load_detector_config("train-world-detector", ["model.arch=yolo11n.yaml", "train.device=cuda:1"]).model.arch == "yolo11n.yaml"
    assert main(["train-detector", "train-world-detector", "data.n_train=ten", f"output={tmp_path}"]) == 2
    assert main(["train-detector", "train-world-detector", "model.arch=foo.txt", f"output={tmp_path}"]) == 2
    assert not any(tmp_path.iterdir())  # nothing written before the config is valid


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [[], ["data.labels=reading", "data.morph=0.3"]], ids=["scene", "reading"])
def test_train_detector_smoke_recipe_trains_and_loads_in_the_critic(tmp_path, scheme):
    from milr.critics.detector import DetectorCritic
    from milr.training.detector import WEIGHTS_FILE, class_names, load_detector_config, train_detector

    cfg = load_detector_config("train-world-detector-smoke", [f"output={tmp_path / 'det'}", f"export_to={tmp_path / 'ship'}", *scheme])
    out = train_detector(cfg, log=lambda s: None)
    # The dataset: one label line per object (reading labels: per object read; a corrupted patch may add a fragment).
    labels = sorted((out / "dataset" / "labels" / "train").glob("*.txt"))
    assert len(labels) == cfg.data.n_train
    counts = [len(p.read_text().splitlines()) for p in labels]
    assert all(0 <= n <= world.MAX_OBJECTS + cfg.data.corrupt_tokens for n in counts)
    assert sum(n > 0 for n in counts) >= 0.7 * len(counts)
    card = json.loads((tmp_path / "ship" / "card.json").read_text())
    assert card["classes"] == class_names(cfg.data) and card["imgsz"] == 64 and card["parameters"] > 0
    assert card["tiers"] == ({"rough": cfg.data.rough_score} if scheme else {})
    assert len(card["classes"]) == (2 if scheme else 1) * len(world.SHAPES)
    assert (tmp_path / "ship" / WEIGHTS_FILE).is_file()
    critic = DetectorCritic(weights=str(tmp_path / "ship" / WEIGHTS_FILE), colors="palette", palette="minimug")
    assert list(critic.names.values()) == card["classes"]  # class names come from the checkpoint
    assert critic.tiers == card["tiers"]
    # The card's inference settings reach the critic unless the recipe sets them.
    assert card["calibration"] is None or card["calibration"]["type"] == "platt"  # None: too few detections to fit
    assert critic.calibration == card["calibration"] and critic.agnostic_nms is True and critic.iou == 0.5
    explicit = DetectorCritic(weights=str(tmp_path / "ship" / WEIGHTS_FILE), colors="palette", palette="minimug",
                              iou=0.6, agnostic_nms=False, calibration="none")
    assert explicit.calibration is None and explicit.agnostic_nms is False and explicit.iou == 0.6
    md = suite.split_prompts("single_object", "test")[0]
    img = torch.from_numpy(world.render(world.sample_scene_for(md, np.random.default_rng(0)))).permute(2, 0, 1).float() / 255
    r = critic.score(img[None], [md["prompt"]], [md])
    assert r.shape == (1,) and 0.0 <= float(r[0]) <= 1.0


def test_platt_calibration_of_confidences():
    from milr.critics.detector import calibrate

    conf = np.array([0.5, 0.9], dtype=np.float32)
    # sigmoid(a * logit(p) + b): logit(0.5) = 0, logit(0.9) = ln 9.
    out = calibrate(conf, {"type": "platt", "a": 2.0, "b": 1.0})
    assert out == pytest.approx([1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(-(2 * np.log(9) + 1)))], rel=1e-5)
    assert calibrate(conf, None) is conf
    with pytest.raises(ValueError, match="unknown calibration type"):
        calibrate(conf, {"type": "isotonic"})


def test_calibration_fit_recovers_a_known_map(tmp_path):
    """Detections whose hit rate is sigmoid(2 logit(c) + 1): the fit finds a ~ 2, b ~ 1."""
    from milr.training.detector import _fit_platt

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.02, 0.98, 20000)
    z = 2 * np.log(conf / (1 - conf)) + 1
    hits = rng.random(conf.size) < 1 / (1 + np.exp(-z))
    a, b = _fit_platt(conf, hits)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(1.0, abs=0.1)


def test_unknown_shipped_detector_name_is_a_clear_error():
    from milr.critics.detector import resolve_yolo_weights

    with pytest.raises(FileNotFoundError, match="not a shipped detector"):
        resolve_yolo_weights("world_detectr")


def test_shipped_world_detector_reads_rendered_scenes():
    """The shipped detector with GenEval's rules passes scenes that follow TEST-split prompts and
    fails near misses (rendered: the detector's easy case; generated images: the benchmark)."""
    from milr.critics.detector import DetectorCritic, shipped_detectors

    path = shipped_detectors()["world_detector"]
    assert path.stat().st_size <= 8 * 1024 * 1024
    critic = DetectorCritic(weights="world_detector", colors="palette", palette="minimug")
    rng = np.random.default_rng(123)
    images, mds, want = [], [], []
    for tag in world.TAGS:
        for md in suite.split_prompts(tag, "test")[:4]:
            images.append(world.render(world.sample_scene_for(md, rng)))
            mds.append(md)
            want.append(1.0)
            images.append(world.render(world.sample_scene_violating(md, rng)))
            mds.append(md)
            want.append(0.0)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    r = critic.score(x, [m["prompt"] for m in mds], mds)
    agree = float(((r >= 0.5).float() == torch.tensor(want)).float().mean())
    assert agree >= 0.9, [(m["prompt"], w, float(v)) for m, w, v in zip(mds, want, r) if (v >= 0.5) != (w == 1.0)]


def test_shipped_detector_card_matches_the_weights_and_its_markdown():
    """card.json states the checkpoint's classes, and MODEL_CARD.md is generated from card.json."""
    import importlib.util
    from pathlib import Path

    from milr.critics.detector import detector_card, load_yolo, shipped_detectors

    path = shipped_detectors()["world_detector"]
    card = detector_card(path)
    assert list(dict(load_yolo(path).names).values()) == card["classes"]
    assert [c.partition("/")[0] for c in card["classes"]][:len(world.SHAPES)] == world.SHAPES
    assert {c.partition("/")[2] for c in card["classes"]} - {""} <= set(card.get("tiers", {}))
    assert card["agreement_with_exact_scorer"]["split"] == "test"
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "world_detector_agreement.py"
    spec = importlib.util.spec_from_file_location("world_detector_agreement", bench)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (path.parent / "MODEL_CARD.md").read_text() == mod.model_card(card)


def test_agreement_decomposition_swaps_in_the_exact_reading():
    """--decompose: with the detector's boxes, the exact reading's class repairs a detector that names
    every shape wrongly, and the exact score repairs one whose scores all sit under GenEval's cut."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    from milr.critics.detector import PaletteColorClassifier
    from milr.world import scorer

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "world_detector_agreement.py"
    spec = importlib.util.spec_from_file_location("world_detector_agreement", bench)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class Fake:
        color_classifier = PaletteColorClassifier(world.COLORS)

        def __init__(self, change):
            self.change = change

        def _detect(self, arr):
            return [[self.change(d) for d in scorer.detect(img)] for img in arr]

    rng = np.random.default_rng(5)
    pairs = []
    for md in suite.split_prompts("two_object", "train")[:6]:
        scene = world.sample_scene_for(md, rng)
        while len(scene.objects) != 2:  # no distractor: renaming every shape must lose a named class
            scene = world.sample_scene_for(md, rng)
        pairs.append((torch.from_numpy(world.render(scene)).permute(2, 0, 1).float() / 255, md))
    other = {s: world.SHAPES[(i + 1) % len(world.SHAPES)] for i, s in enumerate(world.SHAPES)}
    wrong_class = mod.decompose(Fake(lambda d: dataclasses.replace(d, cls=other[d.cls])), pairs)["two_object"]
    assert wrong_class["detector"] == 0.0
    assert wrong_class["exact class"] == wrong_class["exact class + score"] == 1.0
    assert wrong_class["exact score"] == 0.0
    unsure = mod.decompose(Fake(lambda d: dataclasses.replace(d, score=0.1)), pairs)["two_object"]
    assert unsure["detector"] == unsure["exact class"] == 0.0
    assert unsure["exact score"] == unsure["exact class + score"] == 1.0
