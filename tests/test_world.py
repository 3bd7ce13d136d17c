"""MiniMUG's scene world, its exact scorer and its prompt suite."""

import json
from importlib import resources

import numpy as np
import pytest

from milr import world
from milr.world import palette, scorer, suite
from milr.world import (
    COLORS,
    SHAPES,
    TAGS,
    VOCAB,
    Scene,
    all_prompts,
    gt_detections,
    make_obj,
    plan_text,
    question_metadata,
    questions_for,
    render,
    sample_prompt,
    sample_question,
    sample_scene_for,
    sample_scene_violating,
    scene_is_valid,
    truth,
)
from milr.world.scorer import detect, score_image


def _scenes(n, seed=0):
    """n (metadata, scene, expected truth) triples over all tags, half satisfying, half violating."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        md = sample_prompt(rng, TAGS[i % len(TAGS)])
        if i % 2 == 0:
            out.append((md, sample_scene_for(md, rng), True))
        else:
            out.append((md, sample_scene_violating(md, rng), False))
    return out


@pytest.fixture(scope="module")
def scenes():
    return _scenes(2100)


# ------------------------------------------------------------------------------------------
# world basics
# ------------------------------------------------------------------------------------------
def test_constants():
    assert len(SHAPES) >= 4 and len(COLORS) >= 6
    assert "white" not in COLORS
    assert world.IMAGE_SIZE == 32 and world.BACKGROUND == (255, 255, 255)
    assert set(COLORS) <= {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}


@pytest.mark.parametrize("size", range(world.MIN_SIZE, world.MAX_SIZE + 1))
def test_shape_masks_fill_their_box_and_differ(size):
    masks = {s: world.shape_mask(s, size) for s in SHAPES}
    for s, m in masks.items():
        assert m.shape == (size, size)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), s
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1 :]:
            assert (masks[a] ^ masks[b]).sum() >= 12, (a, b, size)


def test_palette_is_separated_and_blends_with_white_never_read_as_another_colour():
    names = list(COLORS)
    pal = np.array([COLORS[c] for c in names], float)
    white = np.array(world.BACKGROUND, float)
    for i in range(len(names)):
        assert np.linalg.norm(pal[i] - white) > 200
        for j in range(i + 1, len(names)):
            assert np.linalg.norm(pal[i] - pal[j]) > 80
    alphas = np.linspace(0, 1, 101)
    for i, name in enumerate(names):
        blend = np.rint(alphas[:, None] * pal[i] + (1 - alphas[:, None]) * white).astype(np.uint8)
        labels = palette.palette_labels(blend[None])[0]
        # a soft edge is the colour where it covers at least half the pixel, else background
        assert (labels[alphas >= 0.52] == i + 1).all(), name
        assert (labels[alphas <= 0.48] == 0).all(), name


def test_render_and_box():
    obj = make_obj("square", "red", 3, 5, 10)
    img = render(Scene([obj]))
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert world.obj_box(obj) == (3, 5, 13, 15)
    ys, xs = np.nonzero((img != 255).any(-1))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (3, 5, 13, 15)
    assert tuple(img[5, 3]) == COLORS["red"]


def test_determinism():
    for tag in TAGS:
        a = np.random.default_rng(7)
        b = np.random.default_rng(7)
        md_a, md_b = sample_prompt(a, tag), sample_prompt(b, tag)
        assert md_a == md_b
        sa, sb = sample_scene_for(md_a, a), sample_scene_for(md_b, b)
        assert sa == sb and np.array_equal(render(sa), render(sb))
        assert sample_scene_violating(md_a, a) == sample_scene_violating(md_b, b)
        assert sample_question(sa, a) == sample_question(sb, b)


def test_scenes_valid(scenes):
    for md, sc, _ in scenes:
        assert scene_is_valid(sc), (md["prompt"], sc)


# ------------------------------------------------------------------------------------------
# prompts: GenEval's schema
# ------------------------------------------------------------------------------------------
def _schema(md):
    return (tuple(md), tuple(tuple(c) for c in md["include"]), tuple(tuple(c) for c in md.get("exclude", [])))


def test_metadata_schema_matches_geneval_exactly():
    text = resources.files("milr.data").joinpath("geneval/evaluation_metadata.jsonl").read_text()
    ref: dict[str, set] = {}
    for line in text.splitlines():
        md = json.loads(line)
        ref.setdefault(md["tag"], set()).add(_schema(md))
    assert set(ref) == set(TAGS)
    for tag in TAGS:
        ours = {_schema(md) for md in all_prompts(tag)}
        assert ours <= ref[tag], tag
        for md in all_prompts(tag):
            assert md["tag"] == tag and md["prompt"].startswith("a photo of ")
            assert ("exclude" in md) == (tag == "counting")


def test_prompt_shapes_follow_geneval():
    md = world.make_prompt("position", a="square", rel="left of", b="circle")
    assert md == {
        "tag": "position",
        "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a square left of a circle",
    }
    md = world.make_prompt("counting", a="cross", n=3)
    assert md["prompt"] == "a photo of three crosses"
    assert md["include"] == [{"class": "cross", "count": 3}] and md["exclude"] == [{"class": "cross", "count": 4}]
    assert world.make_prompt("colors", a="circle", color="orange")["prompt"] == "a photo of an orange circle"
    counts = {t: len(all_prompts(t)) for t in TAGS}
    assert counts == {"single_object": 5, "two_object": 20, "counting": 15, "colors": 35, "position": 80, "color_attr": 840}
    for tag in TAGS:
        texts = [p["prompt"] for p in all_prompts(tag)]
        assert len(set(texts)) == len(texts)


def test_vocab_covers_everything():
    vocab = set(VOCAB)
    assert len(vocab) == len(VOCAB)
    for tag in TAGS:
        for md in all_prompts(tag):
            assert set(world.words(md["prompt"])) <= vocab, md["prompt"]
    for q in world.all_questions():
        assert set(world.words(q)) <= vocab, q


# ------------------------------------------------------------------------------------------
# truth, near misses, plans, questions
# ------------------------------------------------------------------------------------------
def test_truth_of_satisfying_and_violating(scenes):
    for md, sc, expected in scenes:
        assert truth(sc, md) is expected, (md["prompt"], sc)


@pytest.mark.parametrize("tag", TAGS)
def test_every_violation_kind_fails(tag):
    rng = np.random.default_rng(3)
    for md in all_prompts(tag)[:: max(1, len(all_prompts(tag)) // 6)]:
        for kind in world.violation_kinds(md):
            sc = sample_scene_violating(md, rng, kind=kind)
            assert not truth(sc, md), (md["prompt"], kind)


def test_satisfying_scenes_never_add_objects_of_prompt_classes():
    rng = np.random.default_rng(5)
    for tag in TAGS:
        for _ in range(40):
            md = sample_prompt(rng, tag)
            sc = sample_scene_for(md, rng)
            asked = {c["class"]: c["count"] for c in md["include"]}
            for cls, n in asked.items():
                assert sum(o.shape == cls for o in sc.objects) == n
            assert len(sc.objects) - sum(asked.values()) in (0, 1)


def test_position_scenes_have_margin():
    rng = np.random.default_rng(11)
    for _ in range(100):
        md = sample_prompt(rng, "position")
        sc = sample_scene_for(md, rng)
        ref = next(o for o in sc.objects if o.shape == md["include"][0]["class"])
        obj = next(o for o in sc.objects if o.shape == md["include"][1]["class"])
        assert world.relation_clear(world.obj_box(obj), world.obj_box(ref), md["include"][1]["position"][0])


def test_plan_text():
    sc = Scene([make_obj("square", "blue", 20, 20, 10), make_obj("circle", "red", 1, 1, 8)])
    assert plan_text(sc) == "red circle left top ; blue square right bottom"
    for md, s, _ in _scenes(60, seed=9):
        p = plan_text(s)
        assert len(p.split()) <= 24 and set(p.split()) <= set(VOCAB)


def test_questions_for_decompose_the_prompt(scenes):
    for md, sc, expected in scenes[:600]:
        qs = questions_for(md)
        assert qs and all(q in world.all_questions() for q in qs)
        assert all(world.answer(sc, q) for q in qs) is expected, (md["prompt"], qs)
    assert questions_for(world.make_prompt("position", a="square", rel="left of", b="circle")) == [
        "is there a circle ?",
        "is there a square ?",
        "is the square left of the circle ?",
    ]
    assert questions_for(world.make_prompt("counting", a="triangle", n=3)) == ["are there exactly three triangles ?"]


def test_sample_question_balanced_and_consistent_with_scorer():
    rng = np.random.default_rng(13)
    answers, kinds = [], set()
    for md, sc, _ in _scenes(400, seed=21):
        q, a = sample_question(sc, rng)
        qmd = question_metadata(q)
        assert a == truth(sc, qmd)
        assert score_image(render(sc), qmd).correct == a  # same truth on the rendered image
        answers.append(a)
        kinds.add(world.question_kind(q))
    assert 0.42 < np.mean(answers) < 0.58
    assert kinds == set(world.QUESTION_KINDS)
    with pytest.raises(ValueError):
        question_metadata("is there a dog ?")


# ------------------------------------------------------------------------------------------
# scorer: exact on rendered scenes, robust to small noise
# ------------------------------------------------------------------------------------------
def test_scorer_agrees_with_truth_on_rendered_scenes(scenes):
    assert len(scenes) >= 2000
    for md, sc, expected in scenes:
        img = render(sc)
        dets = detect(img)
        assert dets == gt_detections(sc), (md["prompt"], sc)  # classes, colours, boxes, scores 1.0
        assert score_image(img, md).correct == truth(sc, md) == expected


def test_scorer_on_random_scenes_with_repeated_classes():
    rng = np.random.default_rng(17)
    for _ in range(300):
        sc = world.random_scene(rng)
        assert detect(render(sc)) == gt_detections(sc)


def test_scorer_robust_to_noise_specks_and_soft_edges():
    rng = np.random.default_rng(19)
    for md, sc, _ in _scenes(120, seed=23):
        img = render(sc).astype(np.int16)
        noisy = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        assert [(d.cls, d.color) for d in detect(noisy)] == [(d.cls, d.color) for d in gt_detections(sc)]
        # a stray coloured pixel on the background is noise (< MIN_PIXELS)
        speck = render(sc)
        free = np.argwhere((speck == 255).all(-1))
        y, x = free[0]
        speck[y, x] = COLORS["red"]
        assert [(d.cls, d.color) for d in detect(speck)] == [(d.cls, d.color) for d in gt_detections(sc)]
    # a faint (60 % white) rim around an object is background, not another colour
    obj = make_obj("circle", "red", 10, 10, 10)
    img = render(Scene([obj])).astype(float)
    mask = (img != 255).any(-1)
    from scipy import ndimage

    rim = ndimage.binary_dilation(mask) & ~mask
    img[rim] = 0.4 * np.array(COLORS["red"]) + 0.6 * 255
    dets = detect(img.astype(np.uint8))
    assert [(d.cls, d.color, d.score) for d in dets] == [("circle", "red", 1.0)]
    # blur (sigma 0.6) plus noise: soft edges are cut at half coverage, shapes survive
    for md, sc, _ in _scenes(60, seed=27):
        img = render(sc).astype(float)
        soft = np.stack([ndimage.gaussian_filter(img[..., c], 0.6) for c in range(3)], -1)
        soft = np.clip(np.rint(soft + rng.normal(0, 6, soft.shape)), 0, 255).astype(np.uint8)
        assert [(d.cls, d.color) for d in detect(soft) if d.score > 0.9] == [(d.cls, d.color) for d in gt_detections(sc)]


def test_detect_accepts_float_chw():
    sc = Scene([make_obj("triangle", "green", 4, 4, 9)])
    img = render(sc)
    chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert detect(chw) == detect(img) == gt_detections(sc)


# ------------------------------------------------------------------------------------------
# suite and split
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", suite.SPLITS)
def test_suite_size_ids_and_schema(split):
    items = suite.world_suite(split)
    assert len({it["id"] for it in items}) == len(items)
    for tag in TAGS:
        assert sum(it["metadata"]["tag"] == tag for it in items) >= 50
    for it in items:
        assert set(it) == {"id", "prompt", "metadata", "seed"}
        assert it["prompt"] == it["metadata"]["prompt"]
    assert suite.world_suite(split) == items  # fixed
    assert suite.world_suite(split, tags=["counting"], n_per_tag=10) == [
        it for it in items if it["metadata"]["tag"] == "counting"
    ][:10]


def test_split_disjoint_by_combination():
    train, test = suite.world_suite("train"), suite.world_suite("test")
    assert not {it["seed"] for it in train} & {it["seed"] for it in test}
    for tag in TAGS:
        tr = [it["metadata"] for it in train if it["metadata"]["tag"] == tag]
        te = [it["metadata"] for it in test if it["metadata"]["tag"] == tag]
        all_train = suite.split_prompts(tag, "train")
        if tag in suite.SHARED_TEXT_TAGS:
            # the documented exception: same texts, other seeds
            assert {m["prompt"] for m in te} <= {m["prompt"] for m in all_train}
            continue
        train_keys = {suite.combination(m) for m in all_train}
        assert not {suite.combination(m) for m in te} & train_keys, tag
        assert all(suite.is_train_prompt(m) for m in tr) and not any(suite.is_train_prompt(m) for m in te)
        assert len({m["prompt"] for m in te}) >= 3  # several distinct held-out prompts
    assert suite.SHARED_TEXT_TAGS == ("single_object",)
    # colour binding: every test color_attr prompt has a binding no train color_attr prompt has
    train_bindings = {b for m in suite.split_prompts("color_attr", "train") for b in suite.combination(m)}
    for m in suite.split_prompts("color_attr", "test"):
        assert any(b not in train_bindings for b in suite.combination(m))
    # position: "A right of B" is the same combination as "B left of A"
    p1 = world.make_prompt("position", a="square", rel="right of", b="circle")
    p2 = world.make_prompt("position", a="circle", rel="left of", b="square")
    assert suite.combination(p1) == suite.combination(p2)


def test_sample_train_prompt_skips_test_combinations():
    rng = np.random.default_rng(29)
    for _ in range(300):
        assert suite.is_train_prompt(suite.sample_train_prompt(rng))


def test_registered_suite_and_critic():
    from milr.registry import SUITES

    assert SUITES.get("minimug-world") is suite.world_suite


def test_world_oracle_critic():
    torch = pytest.importorskip("torch")
    from milr.registry import CRITICS

    cls = CRITICS.get("world_oracle")
    rng = np.random.default_rng(31)
    md = sample_prompt(rng, "color_attr")
    good, bad = sample_scene_for(md, rng), sample_scene_violating(md, rng, kind="wrong_color")
    imgs = torch.from_numpy(np.stack([render(good), render(bad)])).permute(0, 3, 1, 2).float() / 255
    assert cls().score(imgs, [md["prompt"]] * 2, [md, md]).tolist() == [1.0, 0.0]
    r = cls(mode="partial").score(imgs, [md["prompt"]] * 2, [md, md]).tolist()
    assert r == [1.0, pytest.approx(0.5 * 3 / 4)]
    up = torch.nn.functional.interpolate(imgs, scale_factor=4, mode="nearest")
    assert cls().score(up, [md["prompt"]] * 2, [md, md]).tolist() == [1.0, 0.0]


def test_the_world_is_data_not_a_model():
    """milr.world (scenes, scorer, suite, data writers) loads without torch, the model package,
    critics or training code: core and critics read world facts from it, never from a model."""
    import subprocess
    import sys

    code = ("import sys, milr.world, milr.world.scorer, milr.world.suite, milr.world.data\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'\n"
            "             or m.startswith(('milr.models', 'milr.critics', 'milr.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
