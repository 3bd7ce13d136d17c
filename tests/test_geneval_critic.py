"""``geneval`` critic: Mask2Former read-out and GenEval post-processing on hand-computed cases
(docs/benchmarks.md section 1), a tiny random Mask2Former + tiny CLIP saved to and loaded from
tmp_path, and the offline failure."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from test_critics_clip_detector import TINY_CLIP

from milr.critics.detector import object_crop
from milr.critics.geneval import (
    class_names,
    detections_from_instances,
    geneval_object_names,
    instances,
    mask_box,
    postprocess,
)
from milr.registry import CRITICS

COCO = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(n, n)
        for n in geneval_object_names()]
GENEVAL_NAMES = {i: n for i, n in enumerate(geneval_object_names())}
CAT, DOG, MOUSE = COCO.index("cat"), COCO.index("dog"), COCO.index("mouse")


def mask(h, w, cells):
    m = np.zeros((h, w), bool)
    for y, x in cells:
        m[y, x] = True
    return m


# ---------------------------------------------------------------------------------------------
# Class names
# ---------------------------------------------------------------------------------------------
def test_class_names_follow_geneval_object_names_by_index():
    names = class_names(dict(enumerate(COCO)))
    assert len(names) == 80
    assert names[MOUSE] == "computer mouse" and names[COCO.index("remote")] == "tv remote"
    assert names[COCO.index("keyboard")] == "computer keyboard" and names[CAT] == "cat"
    assert class_names(dict(enumerate(geneval_object_names()))) == names  # GenEval's own spelling too


def test_class_names_refuse_a_different_order_or_size():
    swapped = list(COCO)
    swapped[CAT], swapped[DOG] = swapped[DOG], swapped[CAT]
    with pytest.raises(ValueError, match="not in GenEval's COCO order"):
        class_names(dict(enumerate(swapped)))
    with pytest.raises(ValueError, match="needs the 80 COCO classes"):
        class_names({0: "cat", 1: "dog"})
    # by name: aliases applied, order free
    assert class_names({0: "mouse", 1: "tvmonitor", 2: "cat"}, "names") == {0: "computer mouse", 1: "tv", 2: "cat"}
    assert class_names({0: "kitty", 1: "dog"}, {"kitty": "cat", "dog": None}) == {0: "cat", 1: None}


# ---------------------------------------------------------------------------------------------
# Mask2Former read-out, by hand
# ---------------------------------------------------------------------------------------------
def test_instances_hand_computed():
    # 2 queries, 2 classes + no-object. Query 0: p = (0.6, 0.3 | 0.1); query 1: p = (0.2, 0.1 | 0.7).
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]]))
    # Mask logits on a 2x2 image: sigmoid(ln 3) = 0.75, sigmoid(ln 9) = 0.9, sigmoid(0) = 0.5 (not > 0.5).
    l3, l9 = math.log(3), math.log(9)
    masks = torch.tensor([[[l3, l9], [0.0, -5.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    labels, scores, binary = instances(logits, masks, top_k=3)
    # top-3 (query, class) pairs by probability: (0, 0) 0.6, (0, 1) 0.3, (1, 0) 0.2
    assert labels.tolist() == [0, 1, 0]
    mean_inside_q0 = (0.75 + 0.9) / 2  # the 0.5 pixel is outside the binary mask
    assert scores.tolist() == pytest.approx([0.6 * mean_inside_q0, 0.3 * mean_inside_q0, 0.0])  # empty mask -> 0
    assert binary[0].tolist() == [[True, True], [False, False]] and not binary[2].any()


def test_mask_box_is_the_masks_pixel_extent():
    assert mask_box(mask(6, 8, [(1, 2), (3, 5), (2, 4)])) == (2.0, 1.0, 6.0, 4.0)  # x2, y2 one past the last pixel
    assert mask_box(np.zeros((4, 4), bool)) == (0.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# GenEval post-processing, by hand
# ---------------------------------------------------------------------------------------------
def _square(i, size=40):
    return mask(size, size, [(i % 10 * 4 + 1, i // 10 * 4 + 1)])


def test_postprocess_threshold_is_strictly_above_0_3():
    out = postprocess([CAT, CAT, DOG], [0.30, 0.31, 0.2], [_square(0), _square(1), _square(2)], GENEVAL_NAMES, "two_object")
    assert list(out) == ["cat"] and [d.score for d in out["cat"]] == [0.31]


def test_postprocess_counting_cut_is_0_9():
    scores = [0.95, 0.9, 0.91, 0.5]
    out = postprocess([CAT] * 4, scores, [_square(i) for i in range(4)], GENEVAL_NAMES, "counting")
    assert [d.score for d in out["cat"]] == [0.95, 0.91]
    out = postprocess([CAT] * 4, scores, [_square(i) for i in range(4)], GENEVAL_NAMES, "colors")
    assert [d.score for d in out["cat"]] == [0.95, 0.91, 0.9, 0.5]


def test_postprocess_keeps_the_16_best_per_class():
    scores = [0.31 + 0.03 * i for i in range(20)]  # 0.31 ... 0.88, given worst first
    out = postprocess([DOG] * 20 + [CAT], scores + [0.4], [_square(i) for i in range(21)], GENEVAL_NAMES, "single_object")
    assert len(out["dog"]) == 16
    assert [round(d.score, 2) for d in out["dog"]] == [round(0.31 + 0.03 * i, 2) for i in range(19, 3, -1)]
    assert len(out["cat"]) == 1  # the cap is per class


def test_postprocess_maps_names_and_boxes_and_drops_unmapped():
    names = {**GENEVAL_NAMES, DOG: None}
    m = mask(40, 40, [(5, 10), (7, 12)])
    out = postprocess([MOUSE, DOG], [0.8, 0.9], [m, _square(3)], names, "single_object")
    assert list(out) == ["computer mouse"]
    det = out["computer mouse"][0]
    assert det.box == (10.0, 5.0, 13.0, 8.0) and det.mask is not None and det.mask.sum() == 2


def test_colour_crop_is_the_mask_on_grey_cropped_to_the_box():
    # A 5x6 image of distinct colours; the object's mask is an L of 3 pixels.
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    m = mask(5, 6, [(1, 2), (2, 2), (2, 3)])
    det = detections_from_instances([CAT], [0.9], [m], GENEVAL_NAMES)[0]
    crop = object_crop(img, det)
    grey = [0x99, 0x99, 0x99]
    expected = np.array([
        [img[1, 2], grey],
        [img[2, 2], img[2, 3]],
    ], dtype=np.uint8)
    assert det.box == (2.0, 1.0, 4.0, 3.0)
    assert crop.shape == (2, 2, 3) and (crop == expected).all()


# ---------------------------------------------------------------------------------------------
# The critic on a tiny random Mask2Former and a tiny CLIP, loaded from local folders
# ---------------------------------------------------------------------------------------------
def build_tiny_mask2former(folder, labels):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=64, num_queries=8, id2label=dict(enumerate(labels)),
                               label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_geneval(tmp_path_factory):
    from milr.critics.clip_score import load_open_clip

    root = tmp_path_factory.mktemp("geneval")
    build_tiny_mask2former(root / "m2f", COCO)
    (root / "clip.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    clip, _, _ = load_open_clip(str(root / "clip.json"), None)
    torch.save(clip.state_dict(), root / "clip.pt")
    critic = CRITICS.get("geneval")(checkpoint=str(root / "m2f"), clip_arch=str(root / "clip.json"),
                                    clip_pretrained=str(root / "clip.pt"), top_k=12, batch_size=2,
                                    test_scale=(80, 64))
    return critic


def test_geneval_critic_reads_tiny_mask2former(tiny_geneval):
    x = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    dets = tiny_geneval.detect(x)
    assert len(dets) == 3 and all(len(d) == 12 for d in dets)  # top_k pairs per image, batches of 2
    for d in dets[0]:
        assert d.cls in geneval_object_names()
        assert d.mask.shape == (48, 40)  # masks at the image's own size
        assert d.box == mask_box(d.mask)
        assert 0.0 <= d.score <= 1.0
    again = tiny_geneval.detect(x[1:2])
    assert [(d.cls, round(d.score, 5)) for d in again[0]] == [(d.cls, round(d.score, 5)) for d in dets[1]]
    md = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]}
    r = tiny_geneval.score(x, ["a photo of a red cat"] * 3, [md] * 3)
    assert r.shape == (3,) and set(r.tolist()) <= {0.0, 1.0}
    assert "geneval:v1" in tiny_geneval.identity()


def test_geneval_input_follows_mmdets_test_pipeline(tiny_geneval, monkeypatch):
    """Resize keeping the ratio within (long, short) bounds, normalise, zero-pad to a multiple of 32."""
    monkeypatch.setattr(tiny_geneval, "test_scale", (90, 50))
    img = np.full((1, 40, 60, 3), 200, np.uint8)  # h 40, w 60: scale min(90/60, 50/40) = 1.25 -> 50 x 75
    pixels, valid = tiny_geneval.preprocess(img)
    assert pixels.shape == (1, 3, 64, 96) and valid.shape == (1, 64, 96)
    assert valid[0, :50, :75].all() and valid.sum() == 50 * 75
    mean, std = tiny_geneval.processor.image_mean, tiny_geneval.processor.image_std  # ImageNet's, in [0, 1] units
    for c in range(3):
        expected = (200 - 255 * mean[c]) / (255 * std[c])
        assert torch.allclose(pixels[0, c, :50, :75], torch.full((50, 75), expected), atol=1e-5)
    assert (pixels[0, :, 50:, :] == 0).all() and (pixels[0, :, :, 75:] == 0).all()


def test_geneval_critic_applies_rules_to_detections(tiny_geneval, monkeypatch):
    """Counting needs exactly N above 0.9; colours come from the CLIP classifier on the mask crop."""
    m1, m2, m3 = (mask(32, 32, [(4, 4 + 8 * i)]) for i in range(3))
    two = detections_from_instances([CAT, CAT, CAT], [0.95, 0.92, 0.85], [m1, m2, m3], GENEVAL_NAMES)
    three = detections_from_instances([CAT, CAT, CAT], [0.95, 0.92, 0.91], [m1, m2, m3], GENEVAL_NAMES)
    monkeypatch.setattr(tiny_geneval, "_detect", lambda arr: [two, three])
    count2 = {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}]}
    assert tiny_geneval.score(torch.rand(2, 3, 32, 32), ["two cats"] * 2, [count2] * 2).tolist() == [1.0, 0.0]
    seen = []
    monkeypatch.setattr(tiny_geneval, "color_classifier", lambda img, det: seen.append(det.box) or "blue")
    red = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]}
    blue = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "blue"}]}
    assert tiny_geneval.score(torch.rand(2, 3, 32, 32), ["c"] * 2, [red, blue]).tolist() == [0.0, 1.0]
    assert seen == [two[0].box, three[0].box]  # only the top-1 object is colour-checked


def test_geneval_uncached_checkpoint_fails_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        # an uncached CLIP tag too: the Mask2Former check comes first, nothing heavy is loaded
        CRITICS.get("geneval")(clip_pretrained="laion2b_s32b_b82k")
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    assert "\n" not in msg
    assert "huggingface-cli download facebook/mask2former-swin-small-coco-instance" in msg and "checkpoint: DIR" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CRITICS.get("geneval")(checkpoint=str(tmp_path / "no-such-folder"))


def test_geneval_boxes_only_as_t2i_spatial_detector(tmp_path, monkeypatch):
    """t2i_spatial builds geneval without a colour CLIP and measures its boxes in UniDet's frame."""
    build_tiny_mask2former(tmp_path / "m2f", COCO)
    spatial = CRITICS.get("t2i_spatial")(detector={"name": "geneval", "checkpoint": str(tmp_path / "m2f"), "top_k": 5,
                                                   "test_scale": None})  # the checkpoint's own processor
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    raw, scaled = spatial.detector.detect(x)[0], spatial.detect(x)[0]
    assert len(raw) == len(scaled) == 5
    for r, s in zip(raw, scaled):
        assert s.box == pytest.approx(tuple(v * 479 / 64 for v in r.box)) and s.score == r.score
    assert spatial.score(x, ["a cat near a dog"]).shape == (1,)
    geneval = spatial.detector
    monkeypatch.setattr(geneval, "_detect", lambda arr: [detections_from_instances([CAT], [0.9], [mask(64, 64, [(1, 1)])],
                                                                                  GENEVAL_NAMES)])
    red = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]}
    with pytest.raises(ValueError, match="colors: none"):
        geneval.score(x, ["a photo of a red cat"], [red])


def test_geneval_preflight_resolves_without_loading(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from milr.critics.clip_score import WeightsNotFoundError

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    cls = CRITICS.get("geneval")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download facebook/mask2former-swin-small-coco-instance"):
        cls.preflight({})
    folder = build_tiny_mask2former(tmp_path / "m2f", COCO)
    with pytest.raises(WeightsNotFoundError, match="ViT-L-14/openai"):  # colours need the CLIP weights too
        cls.preflight({"checkpoint": str(folder)})
    cls.preflight({"checkpoint": str(folder), "colors": "none"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cls.preflight({"checkpoint": str(folder), "clip_pretrained": str(tmp_path / "clip.pt")})
    t2i = CRITICS.get("t2i_spatial")  # builds geneval boxes-only: no CLIP needed
    t2i.preflight({"detector": {"name": "geneval", "checkpoint": str(folder)}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        t2i.preflight({"detector": {"name": "geneval", "checkpoint": str(tmp_path / "nowhere")}})
