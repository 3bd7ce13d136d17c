"""``clip_score`` and ``detector`` critics on tiny models built and saved here, loaded back the way
a user's real checkpoint loads (a local file path), plus GenEval's rules through the detector.

Expected verdicts are worked out by hand from GenEval's written rules (docs/benchmarks.md §1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from milr.geneval import Detection
from milr.registry import CRITICS

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A tiny open_clip config JSON and two different random checkpoints of it."""
    from milr.critics.clip_score import load_open_clip

    d = tmp_path_factory.mktemp("clip")
    cfg = d / "milr-test-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, _, _ = load_open_clip(str(cfg), None)
        p = d / f"weights{seed}.pt"
        torch.save(model.state_dict(), p)
        paths.append(p)
    return cfg, paths[0], paths[1]


def images(n=4, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


PROMPTS = ["a photo of a red circle", "a photo of two squares", "a blue cross", "a photo of a cat"]


# ---------------------------------------------------------------------------------------------
# clip_score
# ---------------------------------------------------------------------------------------------
def test_clip_score_registered_with_card():
    cls = CRITICS.get("clip_score")
    assert cls.__name__ == "CLIPScore"
    assert CRITICS.card("clip_score").max_text_tokens == 77


def test_clip_score_local_checkpoint_round_trip(clip_files):
    from milr.critics.clip_score import CLIPScore

    cfg, w0, w1 = clip_files
    a = CLIPScore(arch=str(cfg), pretrained=str(w0))
    b = CLIPScore(arch=str(cfg), pretrained=str(w0))
    c = CLIPScore(arch=str(cfg), pretrained=str(w1))
    x = images()
    sa, sb, sc = a.score(x, PROMPTS), b.score(x, PROMPTS), c.score(x, PROMPTS)
    assert sa.shape == (4,) and sa.dtype == torch.float32
    assert torch.allclose(sa, sb)
    assert not torch.allclose(sa, sc)  # the weights were really loaded
    assert a.identity() == b.identity() != c.identity()
    assert ((sa >= -1) & (sa <= 1)).all()


def test_clip_score_matches_manual_cosine(clip_files):
    from milr.critics.clip_score import CLIPScore, preprocess_tensor

    cfg, w0, _ = clip_files
    critic = CLIPScore(arch=str(cfg), pretrained=str(w0))
    x = images(2, size=32)  # already the model's size: preprocessing is normalisation only
    with torch.no_grad():
        pix = preprocess_tensor(x, critic.pp_cfg)
        mean = torch.tensor(critic.pp_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(critic.pp_cfg["std"]).view(1, 3, 1, 1)
        assert torch.allclose(pix, (x - mean) / std, atol=1e-6)
        img = F.normalize(critic.model.encode_image(pix), dim=-1)
        txt = F.normalize(critic.model.encode_text(critic.tokenizer(PROMPTS[:2])), dim=-1)
    assert torch.allclose(critic.score(x, PROMPTS[:2]), (img * txt).sum(-1), atol=1e-5)


def test_tensor_preprocessing_agrees_with_open_clip_transform(clip_files):
    """Our differentiable resize/crop/normalise matches open_clip's PIL eval transform closely."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from milr.critics.clip_score import CLIPScore, preprocess_tensor

    cfg, w0, _ = clip_files
    pp = CLIPScore(arch=str(cfg), pretrained=str(w0)).pp_cfg
    transform = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    rng = np.random.default_rng(0)
    for h, w in [(48, 40), (100, 64)]:  # shrink, centre-crop along the long side
        arr = np.kron((rng.random((h // 4, w // 4, 3)) * 255).astype(np.uint8), np.ones((4, 4, 1), np.uint8))
        ref = transform(Image.fromarray(arr))
        mine = preprocess_tensor(torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 255, pp)[0]
        assert mine.shape == ref.shape
        assert float((mine - ref).abs().mean()) < 0.02  # interpolation details only (normalised units)


def test_clip_score_variant_batching_and_order(clip_files):
    from milr.critics.clip_score import CLIPScore

    cfg, w0, _ = clip_files
    cos = CLIPScore(arch=str(cfg), pretrained=str(w0), batch_size=32)
    small = CLIPScore(arch=str(cfg), pretrained=str(w0), batch_size=3, variant="clipscore")
    x = images(5)
    prompts = PROMPTS + ["a photo of a dog"]
    c = cos.score(x, prompts)
    s = small.score(x, prompts)
    assert torch.allclose(s, 2.5 * c.clamp(min=0), atol=1e-5)  # Hessel et al.'s w = 2.5
    perm = torch.tensor([4, 2, 0, 3, 1])
    assert torch.allclose(cos.score(x[perm], [prompts[i] for i in perm]), c[perm], atol=1e-5)


def test_clip_score_differentiable_path(clip_files):
    from milr.critics.clip_score import CLIPScore

    cfg, w0, _ = clip_files
    critic = CLIPScore(arch=str(cfg), pretrained=str(w0))
    x = images(2).requires_grad_(True)
    assert not critic.score(x, PROMPTS[:2]).requires_grad  # no graph by default
    s = critic.score_differentiable(x, PROMPTS[:2])
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    flagged = CLIPScore(arch=str(cfg), pretrained=str(w0), requires_grad=True)
    assert flagged.score(x, PROMPTS[:2]).requires_grad


def test_clip_score_local_folder(clip_files, tmp_path):
    """A folder with open_clip_config.json and weights (what `huggingface-cli download` gives)."""
    from milr.critics.clip_score import CLIPScore

    cfg, w0, _ = clip_files
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    (folder / "open_clip_pytorch_model.bin").write_bytes(Path(w0).read_bytes())
    x = images()
    ref = CLIPScore(arch=str(cfg), pretrained=str(w0)).score(x, PROMPTS)
    assert torch.allclose(CLIPScore(arch=str(folder)).score(x, PROMPTS), ref, atol=1e-6)


def _fake_hf_cache(cache_dir: Path, repo_id: str, files: dict) -> None:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/<file>}."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_clip_score_cached_hub_names_load_offline(clip_files, tmp_path):
    from milr.critics.clip_score import CLIPScore, _resolve_tag

    cfg, w0, _ = clip_files
    cache = tmp_path / "hf"
    config = json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}).encode()
    _fake_hf_cache(cache, "me/tiny-clip", {"open_clip_config.json": config, "open_clip_pytorch_model.bin": Path(w0).read_bytes()})
    x = images()
    ref = CLIPScore(arch=str(cfg), pretrained=str(w0)).score(x, PROMPTS)
    hub = CLIPScore(arch="hf-hub:me/tiny-clip", cache_dir=str(cache))
    assert torch.allclose(hub.score(x, PROMPTS), ref, atol=1e-6)
    # A pretrained tag whose file is in the cache resolves to it (no download, no hub call).
    _fake_hf_cache(cache, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {"open_clip_pytorch_model.bin": b"x"})
    path, tag_cfg = _resolve_tag("ViT-B-32", "laion2b_s34b_b79k", str(cache))
    assert path.endswith("open_clip_pytorch_model.bin") and Path(path).read_bytes() == b"x"
    assert tag_cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_clip_score_uncached_tag_fails_at_once(tmp_path):
    from milr.critics.clip_score import CLIPScore, WeightsNotFoundError

    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        CLIPScore(arch="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 2.0  # never a minute of hub retries
    msg = str(e.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "pretrained: /path/to/weights" in msg


def test_clip_score_bad_inputs(clip_files, tmp_path):
    from milr.critics.clip_score import CLIPScore

    cfg, w0, _ = clip_files
    with pytest.raises(ValueError, match="known tags"):
        CLIPScore(arch="ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPScore(arch=str(cfg), pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        CLIPScore(arch="ViT-Q-99")
    with pytest.raises(ValueError, match="variant"):
        CLIPScore(arch=str(cfg), variant="dot")
    critic = CLIPScore(arch=str(cfg), pretrained=str(w0))
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        critic.score(images(2), PROMPTS[:3])


# ---------------------------------------------------------------------------------------------
# detector: GenEval rules through the critic, detections injected at the _detect seam
# ---------------------------------------------------------------------------------------------
class FakeYOLO:
    """Stands in for ``ultralytics.YOLO``: class names only (detections come from the test)."""

    names = {0: "circle", 1: "square", 2: "triangle", 3: "ball"}

    def predict(self, *a, **k):  # pragma: no cover - the seam replaces detection
        raise AssertionError("tests inject detections")


def make_detector(dets_per_image, **kwargs):
    critic = CRITICS.get("detector")(weights=FakeYOLO(), colors="palette", palette="minimug", **kwargs)
    critic._detect = lambda arr: [list(d) for d in dets_per_image]
    return critic


def run(critic, metadata, n=None):
    n = n or len(metadata) if isinstance(metadata, list) else 1
    mds = metadata if isinstance(metadata, list) else [metadata]
    x = torch.ones(len(mds), 3, 32, 32)
    return critic.score(x, [m.get("prompt", "") for m in mds], mds).tolist()


def D(cls, box, score=0.95, color=None):
    return Detection(cls, box, score, color)


SINGLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
TWO = {"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]}
COUNT2 = {"tag": "counting", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}]}
RED = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
# "a circle left of a square": GenEval puts the reference (square) first.
LEFT = {"tag": "position", "include": [{"class": "square", "count": 1},
                                       {"class": "circle", "count": 1, "position": ["left of", 0]}]}
ATTR = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                         {"class": "square", "count": 1, "color": "blue"}]}


def test_detector_single_object_threshold_is_strict():
    assert run(make_detector([[D("circle", (0, 0, 9, 9), 0.31)]]), SINGLE) == [1.0]
    assert run(make_detector([[D("circle", (0, 0, 9, 9), 0.30)]]), SINGLE) == [0.0]  # > 0.3, not >=
    assert run(make_detector([[D("square", (0, 0, 9, 9), 0.99)]]), SINGLE) == [0.0]


def test_detector_two_objects_needs_both():
    both = [D("circle", (0, 0, 9, 9)), D("square", (20, 20, 29, 29))]
    assert run(make_detector([both]), TWO) == [1.0]
    assert run(make_detector([both[:1]]), TWO) == [0.0]


def test_detector_counting_exactly_n_above_0_9():
    two = [D("circle", (0, 0, 8, 8)), D("circle", (12, 0, 20, 8))]
    assert run(make_detector([two]), COUNT2) == [1.0]
    assert run(make_detector([two + [D("circle", (24, 0, 31, 8))]]), COUNT2) == [0.0]  # exclude fires
    assert run(make_detector([two + [D("circle", (24, 0, 31, 8), 0.85)]]), COUNT2) == [1.0]  # 0.85 ignored
    weak = [D("circle", (0, 0, 8, 8)), D("circle", (12, 0, 20, 8), 0.85)]
    assert run(make_detector([weak]), COUNT2) == [0.0]  # counting cut is 0.9, not 0.3


def test_detector_colour_from_detection_and_top_count_only():
    assert run(make_detector([[D("circle", (0, 0, 9, 9), color="red")]]), RED) == [1.0]
    assert run(make_detector([[D("circle", (0, 0, 9, 9), color="blue")]]), RED) == [0.0]
    # Only the top-1 circle (by score) is colour-checked: a red runner-up does not help.
    dets = [D("circle", (0, 0, 9, 9), 0.9, "blue"), D("circle", (20, 0, 29, 9), 0.5, "red")]
    assert run(make_detector([dets]), RED) == [0.0]


def test_detector_palette_colour_on_rendered_pixels():
    from milr import world as W

    obj = W.make_obj("circle", "red", 4, 6, 12)
    img = torch.from_numpy(W.render(W.Scene([obj])).copy()).permute(2, 0, 1).float() / 255
    critic = make_detector([[D("circle", W.obj_box(obj))]])  # colour left to the classifier
    x = img[None]
    blue = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}]}
    assert critic.score(x, ["a photo of a red circle"], [RED]).tolist() == [1.0]
    assert critic.score(x, ["a photo of a blue circle"], [blue]).tolist() == [0.0]
    assert "found 0 blue" in critic.last_results[0].reason


def test_detector_position_every_pair():
    square, left_circle, right_circle = (20, 10, 30, 20), (0, 10, 10, 20), (22, 25, 30, 31)
    ok = [D("square", square), D("circle", left_circle)]
    assert run(make_detector([ok]), LEFT) == [1.0]
    swapped = [D("square", left_circle), D("circle", square)]
    assert run(make_detector([swapped]), LEFT) == [0.0]
    below = [D("square", square), D("circle", right_circle)]  # below, not left of
    assert run(make_detector([below]), LEFT) == [0.0]


def test_detector_color_attr_binds_colours_to_objects():
    good = [D("circle", (0, 0, 9, 9), color="red"), D("square", (20, 0, 29, 9), color="blue")]
    bad = [D("circle", (0, 0, 9, 9), color="blue"), D("square", (20, 0, 29, 9), color="red")]
    assert run(make_detector([good, bad]), [ATTR, ATTR]) == [1.0, 0.0]


def test_detector_partial_mode_is_dense():
    one_of_two = [[D("circle", (0, 0, 9, 9))]]
    assert run(make_detector(one_of_two), TWO) == [0.0]
    # 1 of 2 sub-checks passed, scaled by partial_weight; correct images still get 1.0.
    assert run(make_detector(one_of_two, mode="partial", partial_weight=1.0), TWO) == [0.5]
    assert run(make_detector(one_of_two, mode="partial"), TWO) == [0.25]
    attr_half = [[D("circle", (0, 0, 9, 9), color="red"), D("square", (20, 0, 29, 9), color="red")]]
    # checks: circle count, circle colour, square count pass; square colour fails -> 3/4
    assert run(make_detector(attr_half, mode="partial", partial_weight=1.0), ATTR) == [0.75]


def test_detector_confident_mode_scales_a_pass_by_its_least_certain_box():
    sure = [D("circle", (0, 0, 9, 9), 0.96), D("square", (20, 20, 29, 29), 0.98)]
    # A pass: 0.5 + 0.5 * min certainty, certainty = max(score, 1 - score).
    assert run(make_detector([sure], mode="confident"), TWO) == pytest.approx([0.5 + 0.5 * 0.96])
    # A doubtful extra circle (0.4, certainty 0.6) keeps the verdict but lowers the reward...
    doubt = sure + [D("circle", (20, 0, 29, 9), 0.4)]
    assert run(make_detector([doubt], mode="confident"), TWO) == pytest.approx([0.5 + 0.5 * 0.6])
    assert run(make_detector([doubt], mode="partial"), TWO) == [1.0]
    # ...a box of a class the prompt does not name does not.
    other = sure + [D("triangle", (20, 0, 29, 9), 0.4)]
    assert run(make_detector([other], mode="confident"), TWO) == pytest.approx([0.5 + 0.5 * 0.96])
    # Excluded classes are named by the prompt: a 0.85 third circle (below the counting cut) is doubt.
    two = [D("circle", (0, 0, 8, 8), 0.99), D("circle", (12, 0, 20, 8), 0.99)]
    third = two + [D("circle", (24, 0, 31, 8), 0.85)]
    assert run(make_detector([third], mode="confident"), COUNT2) == pytest.approx([0.5 + 0.5 * 0.85])
    # A failure scores as in partial mode, below every pass (the lowest pass is 0.75).
    one_of_two = [[D("circle", (0, 0, 9, 9))]]
    assert run(make_detector(one_of_two, mode="confident"), TWO) == run(make_detector(one_of_two, mode="partial"), TWO) == [0.25]
    with pytest.raises(ValueError, match="mode"):
        make_detector([[]], mode="confidence")


def test_detector_class_map_and_bad_inputs(tmp_path):
    critic = make_detector([[D("circle", (0, 0, 9, 9))]], class_map={"ball": "circle"})
    assert critic.class_map == {"ball": "circle"}
    with pytest.raises(ValueError, match="not classes of the checkpoint"):
        make_detector([[]], class_map={"football": "circle"})
    with pytest.raises(ValueError, match="needs GenEval metadata"):
        make_detector([[]]).score(torch.ones(1, 3, 32, 32), ["a circle"], [{}])
    with pytest.raises(ValueError, match="mode"):
        make_detector([[]], mode="soft")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="weights: /path/to/model.pt"):
        CRITICS.get("detector")(weights=str(tmp_path / "yolov8n.pt"), colors="palette")
    assert time.perf_counter() - t0 < 5.0


def test_detector_class_map_renames_yolo_names():
    """The real _detect path: YOLO class names go through class_map into GenEval's class names."""

    class Boxes:
        def __init__(self):
            self.xyxy = torch.tensor([[1.0, 1.0, 10.0, 10.0]])
            self.conf = torch.tensor([0.8])
            self.cls = torch.tensor([3.0])  # "ball"

        def __len__(self):
            return 1

    class Result:
        boxes = Boxes()
        masks = None

    class PredictingYOLO(FakeYOLO):
        def predict(self, batch, **kwargs):
            assert batch[0].shape == (32, 32, 3) and kwargs["verbose"] is False
            return [Result() for _ in batch]

    critic = CRITICS.get("detector")(weights=PredictingYOLO(), colors="palette", class_map={"ball": "circle"})
    assert critic.score(torch.ones(1, 3, 32, 32), ["a photo of a circle"], [SINGLE]).tolist() == [1.0]


def test_detector_tier_classes_cap_the_score_between_genevals_cuts():
    """A "circle/rough" box is a circle scoring at most its tier's cap: above GenEval's 0.3 cut, so it
    counts for an object's presence, and under the 0.9 counting cut, so it does not count there."""

    def yolo(classes, confs):
        class Boxes:
            xyxy = torch.tensor([[1.0 + 12 * j, 1.0, 10.0 + 12 * j, 10.0] for j in range(len(classes))])
            conf = torch.tensor(confs)
            cls = torch.tensor([float(c) for c in classes])

            def __len__(self):
                return len(classes)

        class Result:
            boxes = Boxes()
            masks = None

        class TieredYOLO(FakeYOLO):
            names = {0: "circle", 1: "circle/rough"}

            def predict(self, batch, **kwargs):
                return [Result() for _ in batch]

        return TieredYOLO()

    img, cap = torch.ones(1, 3, 32, 32), {"rough": 0.6}
    score = lambda y, md, **kw: CRITICS.get("detector")(weights=y, colors="palette", **kw).score(img, ["p"], [md]).item()  # noqa: E731
    clean_pair, rough_pair = yolo([0, 0], [0.95, 0.95]), yolo([0, 1], [0.95, 0.95])
    assert score(clean_pair, COUNT2, tiers=cap) == 1.0
    assert score(rough_pair, COUNT2, tiers=cap) == 0.0  # the rough circle is capped at 0.6 < 0.9
    assert score(rough_pair, COUNT2, tiers={"rough": 0.95}) == 1.0  # the cap is what decides
    assert score(yolo([1], [0.95]), SINGLE, tiers=cap) == 1.0  # 0.6 > 0.3: a rough circle is a circle
    with pytest.raises(ValueError, match="tier 'rough'"):
        CRITICS.get("detector")(weights=rough_pair, colors="palette")  # no tiers for its classes


def test_object_crop_pastes_mask_on_geneval_grey():
    from milr.critics.detector import MaskedDetection, object_crop

    img = np.zeros((8, 8, 3), np.uint8)
    img[:] = (200, 10, 10)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    crop = object_crop(img, MaskedDetection("circle", (1, 1, 5, 5), 0.9, None, mask))
    assert crop.shape == (4, 4, 3)
    assert (crop[1:3, 1:3] == (200, 10, 10)).all() and (crop[0, 0] == (0x99, 0x99, 0x99)).all()
    plain = object_crop(img, Detection("circle", (1, 1, 5, 5), 0.9))  # boxes only: the raw box
    assert (plain == (200, 10, 10)).all()


def test_clip_colour_classifier_uses_geneval_templates(clip_files):
    from milr.critics.detector import COLOR_TEMPLATES, GENEVAL_COLORS, ClipColorClassifier

    cfg, w0, _ = clip_files
    clf = ClipColorClassifier(str(cfg), str(w0))
    emb = clf._class_embeddings("circle")
    assert emb.shape[0] == 10 and len(GENEVAL_COLORS) == 10
    with torch.no_grad():
        tok = clf.tokenizer([t.format(c="pink", cls="circle") for t in COLOR_TEMPLATES])
        manual = F.normalize(F.normalize(clf.model.encode_text(tok), dim=-1).mean(0), dim=-1)
    assert torch.allclose(emb[GENEVAL_COLORS.index("pink")], manual, atol=1e-6)
    img = np.full((32, 32, 3), 255, np.uint8)
    assert clf(img, Detection("circle", (2, 2, 20, 20), 0.9)) in GENEVAL_COLORS


def test_ultralytics_offline_places_fonts_and_disables_sync():
    from milr.critics.detector import ultralytics_offline

    ultralytics_offline()
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    assert (Path(USER_CONFIG_DIR) / "Arial.ttf").is_file()
    assert (Path(USER_CONFIG_DIR) / "Arial.Unicode.ttf").is_file()
    assert SETTINGS["sync"] is False


# ---------------------------------------------------------------------------------------------
# detector end to end: a YOLO trained here on MiniMUG world images
# ---------------------------------------------------------------------------------------------
YOLO_CLASSES = ["circle"]


def _world_yolo_dataset(root: Path, n: int, seed: int) -> Path:
    from PIL import Image

    from milr import world as W

    rng = np.random.default_rng(seed)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(n):
        base = W.random_scene(rng, int(rng.integers(1, 4)))
        # Circles only: a few seconds of training reliably learn "is there a circle" (a two-class
        # circle/square model needs several times longer to separate the classes).
        scene = W.Scene([W.Obj("circle", o.color, o.cx, o.cy, o.size) for o in base.objects])
        img = W.render(scene).repeat(2, 0).repeat(2, 1)  # 32 -> 64 px
        Image.fromarray(img).save(root / "images" / "train" / f"{i:04d}.png")
        lines = []
        for o in scene.objects:
            x1, y1, x2, y2 = W.obj_box(o)
            s = W.IMAGE_SIZE
            lines.append(f"{YOLO_CLASSES.index(o.shape)} {(x1 + x2) / 2 / s} {(y1 + y2) / 2 / s} {(x2 - x1) / s} {(y2 - y1) / s}\n")
        (root / "labels" / "train" / f"{i:04d}.txt").write_text("".join(lines))
    data = root / "data.yaml"
    names = "".join(f"  {i}: {c}\n" for i, c in enumerate(YOLO_CLASSES))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{names}")
    return data


@pytest.fixture(scope="module")
def world_yolo(tmp_path_factory):
    """A tiny YOLOv8 (width 0.125) trained ~20 s on 96 world images of 1-3 circles; returns its last.pt."""
    import yaml

    from milr.critics.detector import ultralytics_offline

    ultralytics_offline()
    import ultralytics
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("yolo")
    data = _world_yolo_dataset(root / "data", n=96, seed=0)
    arch = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    arch["nc"] = len(YOLO_CLASSES)
    arch["scales"] = {"t": [0.33, 0.125, 256]}  # an 'n' model at half width: 0.35M parameters
    (root / "yolov8t.yaml").write_text(yaml.safe_dump(arch))
    model = YOLO(str(root / "yolov8t.yaml"))
    # nbs = batch: an optimizer step per batch (the default nbs=64 would accumulate 8 batches).
    model.train(data=str(data), epochs=8, imgsz=64, batch=8, nbs=8, workers=0, device="cpu", amp=False,
                val=False, plots=False, warmup_epochs=0, mosaic=0.0, optimizer="SGD", lr0=0.02, seed=0,
                deterministic=True, project=str(root / "runs"), name="world", exist_ok=True, verbose=False)
    return next((root / "runs").rglob("last.pt"))


def _render(*objs) -> torch.Tensor:
    from milr import world as W

    img = W.render(W.Scene([W.make_obj(*o) for o in objs]))
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255


@pytest.mark.slow
def test_detector_with_world_trained_yolo_ranks_correct_image_first(world_yolo):
    critic = CRITICS.get("detector")(weights=str(world_yolo), colors="palette", palette="minimug", imgsz=64)
    assert list(critic.names.values()) == ["circle"]  # class names from the checkpoint
    circle = _render(("circle", "green", 10, 9, 12))
    blank = torch.ones(3, 32, 32)  # the world's white canvas, no object
    r = critic.score(torch.stack([circle, blank]), ["a photo of a circle"] * 2, [SINGLE] * 2)
    assert r[0] > r[1], (r, [res.reason for res in critic.last_results])
    # Colour through the palette classifier on YOLO's box: red circle vs. blue circle.
    red, blue = _render(("circle", "red", 4, 4, 12)), _render(("circle", "blue", 4, 4, 12))
    r = critic.score(torch.stack([red, blue]), ["a photo of a red circle"] * 2, [RED] * 2)
    assert r[0] > r[1], (r, [res.reason for res in critic.last_results])
