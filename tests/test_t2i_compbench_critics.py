"""T2I-CompBench critics: noun chunks, BLIP-VQA product, the spatial rule, CLIPScore and 3-in-1.

Expected values are worked out by hand from docs/benchmarks.md section 3; models are tiny and random,
saved to tmp_path and loaded back by path.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from test_critics_clip_detector import TINY_CLIP

from milr.critics.t2i_spatial import frame_scale, object_names, position_score, relation_of, spatial_score
from milr.critics.t2i_text import RuleAnalyzer, blip_questions, load_analyzer, without_adjectives
from milr.geneval import Detection
from milr.registry import CRITICS

RULES = RuleAnalyzer()


# ---------------------------------------------------------------------------------------------
# Prompt analysis (the rule-based stand-in for spaCy)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, chunks", [
    ("a green bench and a red car", ["a green bench", "a red car"]),
    ("rubber sole shoes and fluffy clouds", ["rubber sole shoes", "fluffy clouds"]),
    ("a metallic desk lamp and a fluffy sweater", ["a metallic desk lamp", "a fluffy sweater"]),
    ("a bird on the left of a chair", ["a bird", "the left", "a chair"]),
    ("The brown dog was lying on the green mat.", ["The brown dog", "the green mat"]),
])
def test_rule_chunker(prompt, chunks):
    assert RULES.noun_chunks(prompt) == chunks


def test_blip_questions_drop_relation_chunks_and_cap_at_8():
    assert blip_questions(RULES, "a bird on the left of a chair") == ["a bird?", "a chair?"]
    assert blip_questions(RULES, "a cat on the side of a dog") == ["a cat?", "a dog?"]
    long = " and ".join(f"a {c} box" for c in ["red", "blue", "green", "pink", "black", "white", "brown", "gold", "grey"])
    qs = blip_questions(RULES, long)
    assert len(qs) == 8 and qs[0] == "a red box?" and qs[-1] == "a gold box?"


def test_adjectives_removed_for_the_clip_part():
    assert without_adjectives(RULES, "The brown dog was lying on the green mat.") == "The dog was lying on the mat ."


def test_chunker_errors_are_one_actionable_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="chunker: /path/to/en_core_web_sm") as e:
        load_analyzer("en_core_web_sm")
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_analyzer(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Spatial rule, by hand
# ---------------------------------------------------------------------------------------------
def test_position_left_right_top_bottom():
    a, far_right = (0, 0, 10, 10), (100, 0, 110, 10)
    assert position_score("on the left of", a, far_right) == 1.0  # dx = 100 > 0, |dx| > |dy|, IoU 0
    assert position_score("on the right of", a, far_right) == 0.0
    assert position_score("on the right of", far_right, a) == 1.0
    # overlapping: dx = 20, IoU = 8000 / 12000 -> pos = 0.1 / (2/3) = 0.15
    assert position_score("on the left of", (0, 0, 100, 100), (20, 0, 120, 100)) == pytest.approx(0.15)
    below = (0, 100, 10, 110)  # y points down: obj2 lower means obj1 is on top
    assert position_score("on the top of", a, below) == 1.0
    assert position_score("on the bottom of", a, below) == 0.0 and position_score("on the bottom of", below, a) == 1.0
    # diagonal where |dx| > |dy|: not "on the top of" even though dy > 0
    assert position_score("on the top of", a, (200, 50, 210, 60)) == 0.0


def test_position_near_and_unknown_phrases():
    a = (0, 0, 10, 10)
    assert position_score("next to", a, (200, 100, 210, 110)) == 1.0  # |dy| = 100 < 150
    assert position_score("near", a, (300, 200, 310, 210)) == pytest.approx(150 / 300)
    assert position_score("on side of", a, (160, 400, 170, 410)) == pytest.approx(150 / 400)
    assert position_score(None, a, (100, 0, 110, 10)) == 0.0
    assert relation_of("a red hat on top of a coat") is None  # "on top of" is not one of the phrases
    assert relation_of("a girl on the top of a frog") == "on the top of"


def test_spatial_score_combination_and_cut():
    left = [Detection("bird", (0, 0, 10, 10), 0.9), Detection("chair", (100, 0, 110, 10), 0.8)]
    assert spatial_score("on the left of", "bird", "chair", left) == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)
    assert spatial_score("on the right of", "bird", "chair", left) == 0.0  # 0.425 < 0.5 -> 0
    assert spatial_score("on the left of", "bird", "dog", left) == 0.0  # one found: 0.25 * 0.9 < 0.5 -> 0
    # only detections above 0.5 count, and each name takes its best detection
    dets = [Detection("bird", (200, 0, 210, 10), 0.6), Detection("bird", (0, 0, 10, 10), 0.95),
            Detection("chair", (100, 0, 110, 10), 0.5), Detection("chair", (100, 0, 110, 10), 0.7)]
    assert spatial_score("on the left of", "bird", "chair", dets) == pytest.approx(0.25 * 0.95 + 0.25 * 0.7 + 0.5)


def test_object_names_2d_and_complex():
    p = "a girl on the top of a frog"
    assert object_names(RULES.tokens(p), p, "2d") == ("person", "frog")
    p = "The fluffy cat is on the left of the soft pillow."
    assert object_names(RULES.tokens(p), p, "complex") == ("cat", "pillow")
    p = "The red hat was on top of the brown coat rack."
    assert object_names(RULES.tokens(p), p, "complex") == ("hat", "coat")


def test_frame_scale_is_unidets_short_479_long_480():
    assert frame_scale(512, 512) == pytest.approx(479 / 512)
    assert frame_scale(384, 768) == pytest.approx(480 / 768)  # the long side caps it


class FakeDetector:
    """A detector critic stand-in: fixed detections in the images' pixels."""

    def __init__(self, dets):
        self.dets = dets

    def detect(self, images):
        return [list(self.dets) for _ in range(images.shape[0])]


def test_t2i_spatial_critic_measures_in_unidets_frame():
    # 64 px images: frame scale 479/64. Centres 30 px apart on both axes = 224.5 px in the frame,
    # so "near" gives 150/224.5 (it would be 1 in raw pixels).
    dets = [Detection("bird", (0, 0, 4, 4), 0.9), Detection("dining table", (30, 30, 34, 34), 0.9)]
    critic = CRITICS.get("t2i_spatial")(detector=FakeDetector(dets))
    r = critic.score(torch.zeros(2, 3, 64, 64), ["a bird near a table", "a bird on the left of a table"])
    near = 0.25 * 0.9 * 2 + 0.5 * 150 / (30 * 479 / 64)
    assert r.tolist() == pytest.approx([near, 0.0])  # dining table -> table; dy = dx so not "left of"
    assert critic.last_details[0]["obj2"] == "table"


def test_t2i_spatial_uses_the_yolo_detector_critic():
    from test_critics_clip_detector import FakeYOLO

    yolo = CRITICS.get("detector")(weights=FakeYOLO(), colors="palette", palette="minimug")
    yolo._detect = lambda arr: [[Detection("circle", (0, 0, 8, 8), 0.9), Detection("square", (40, 0, 48, 8), 0.9)]
                                for _ in arr]
    critic = CRITICS.get("t2i_spatial")(detector=yolo)
    r = critic.score(torch.zeros(1, 3, 64, 64), ["a circle on the left of a square"])
    assert r.tolist() == pytest.approx([0.25 * 0.9 * 2 + 0.5])


# ---------------------------------------------------------------------------------------------
# BLIP-VQA on a tiny random BLIP
# ---------------------------------------------------------------------------------------------
BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "a", "an", "the", "green", "red", "bench",
              "car", "dog", "cat", "and", "?"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(BLIP_WORDS) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, bos_token_id=tok.bos_token_id, pad_token_id=0,
                         sep_token_id=3, max_position_embeddings=64, initializer_range=0.3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, initializer_range=0.3),
    )
    model = BlipForQuestionAnswering(config).eval()
    with torch.no_grad():  # sharper answers than the tiny default init gives
        model.text_decoder.cls.predictions.decoder.weight.normal_(0, 0.3)
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(folder)
    return folder


def test_blip_vqa_answers_from_the_tiny_model(tiny_blip):
    critic = CRITICS.get("t2i_blip_vqa")(checkpoint=str(tiny_blip), image_size=48, batch_size=3)
    assert (critic.yes_id, critic.no_id) == (5, 6)
    x = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    qs = ["a green bench?", "a red car?", "a dog?", "the cat?"]
    p = critic.answer(x, qs)
    assert p.shape == (4,) and ((p > 0) & (p < 1)).all()
    one = CRITICS.get("t2i_blip_vqa")(checkpoint=str(tiny_blip), image_size=48, batch_size=1)
    assert torch.allclose(one.answer(x, qs), p, atol=1e-5)  # batching with padding changes nothing
    assert (critic.answer(x.flip(0), qs) - p).abs().min() > 1e-4  # the answers depend on the image
    s = critic.score(x[:2], ["a green bench and a red car", "a dog"])
    assert s.tolist() == pytest.approx([critic.last_answers[0][0] * critic.last_answers[0][1], critic.last_answers[1][0]])


def test_blip_vqa_score_is_the_product_over_chunks(tiny_blip, monkeypatch):
    critic = CRITICS.get("t2i_blip_vqa")(checkpoint=str(tiny_blip), image_size=32)
    given = {"a green bench?": 0.8, "a red car?": 0.5, "a dog?": 0.9, "the cat?": 0.25}
    asked = []

    def fake_answer(images, questions):
        asked.append((images.shape[0], list(questions)))
        return torch.tensor([given[q] for q in questions])

    monkeypatch.setattr(critic, "answer", fake_answer)
    prompts = ["a green bench and a red car", "a dog on the left of the cat", "on and of"]
    s = critic.score(torch.zeros(3, 3, 32, 32), prompts)
    assert s.tolist() == pytest.approx([0.8 * 0.5, 0.9 * 0.25, 1.0])  # no chunk: a factor of 1
    assert asked == [(4, ["a green bench?", "a red car?", "a dog?", "the cat?"])]


def test_blip_vqa_fails_at_once_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Salesforce/blip-vqa-capfilt-large"):
        CRITICS.get("t2i_blip_vqa")()
    with pytest.raises(FileNotFoundError, match="en_core_web_sm"):
        CRITICS.get("t2i_blip_vqa")(chunker=str(tmp_path / "en_core_web_sm"))
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------------------------------------
# CLIPScore and 3-in-1
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from milr.critics.clip_score import load_open_clip

    d = tmp_path_factory.mktemp("clip")
    (d / "clip.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    model, _, _ = load_open_clip(str(d / "clip.json"), None)
    torch.save(model.state_dict(), d / "clip.pt")
    return str(d / "clip.json"), str(d / "clip.pt")


def test_t2i_clipscore_is_the_raw_cosine(tiny_clip):
    from milr.critics.clip_score import CLIPScore

    arch, weights = tiny_clip
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    prompts = ["a red car", "a green bench"]
    t2i = CRITICS.get("t2i_clipscore")(arch=arch, pretrained=weights)
    assert torch.allclose(t2i.score(x, prompts), CLIPScore(arch=arch, pretrained=weights, variant="cosine").score(x, prompts))


def test_t2i_clipscore_default_weights_fail_at_once(tmp_path):
    from milr.critics.clip_score import WeightsNotFoundError

    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="ViT-B-32/openai"):
        CRITICS.get("t2i_clipscore")(cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 2.0


def test_3in1_combines_parts_per_complex_subset(tiny_blip, tiny_clip, tmp_path, monkeypatch):
    (tmp_path / "complex_val_spatial.txt").write_text("The fluffy cat is on the left of the soft pillow.\r\n")
    (tmp_path / "complex_val_action.txt").write_text("The brown dog was lying on the green mat.\r\n")
    arch, weights = tiny_clip
    critic = CRITICS.get("t2i_3in1")(blip={"checkpoint": str(tiny_blip), "image_size": 32},
                                     spatial={"detector": FakeDetector([])}, clip={"arch": arch, "pretrained": weights},
                                     prompt_lists=str(tmp_path))
    seen = {}

    def fake(part, values):
        def score(images, prompts, metadata=None):
            seen[part] = list(prompts)
            return torch.tensor([values[p.split()[1]] for p in prompts])
        return score

    monkeypatch.setattr(critic.blip, "score", fake("blip", {"fluffy": 0.2, "brown": 0.4, "red": 0.6, "blue": 0.8}))
    monkeypatch.setattr(critic.spatial, "score", fake("spatial", {"fluffy": 0.7, "red": 0.5, "blue": 0.0}))
    monkeypatch.setattr(critic.clip, "score", fake("clip", {"dog": 0.3, "hat": 0.35, "ball": 0.1}))
    prompts = [
        "The fluffy cat is on the left of the soft pillow",   # spatial list (matched up to the '.', any case)
        "the brown dog was lying on the green mat. Extra",   # action list
        "The red hat was on top of the brown coat rack.",     # in neither: all three parts
        "The blue ball is next to the box.",                  # subset from metadata wins over the lists
    ]
    md = [{}, {}, {}, {"complex_subset": "spatialaction"}]
    s = critic.score(torch.zeros(4, 3, 32, 32), prompts, md)
    assert s.tolist() == pytest.approx([(0.7 + 0.2) / 2, (0.3 + 0.4) / 2, (0.6 + 0.5 + 0.35) / 3, (0.8 + 0.0 + 0.1) / 3])
    assert seen["spatial"] == [prompts[0], prompts[2], prompts[3]]  # only where the formula uses it
    assert seen["clip"] == ["the dog was lying on the mat . Extra", "The hat was on top of the coat rack .",
                            "The ball is next to the box ."]
    with pytest.raises(ValueError, match="complex_subset"):
        critic.score(torch.zeros(1, 3, 32, 32), ["x"], [{"complex_subset": "other"}])


# ---------------------------------------------------------------------------------------------
# spaCy from a local folder (skipped without spaCy; en_core_web_sm itself is not on PyPI)
# ---------------------------------------------------------------------------------------------
# (pos, dep, head index) for "a green bench and a red car", as en_core_web_sm parses it.
PARSE = [("DET", "det", 2), ("ADJ", "amod", 2), ("NOUN", "ROOT", 2), ("CCONJ", "cc", 2),
         ("DET", "det", 6), ("ADJ", "amod", 6), ("NOUN", "conj", 2)]


def test_spacy_model_folder_is_loaded_and_read(tmp_path):
    spacy = pytest.importorskip("spacy")
    from spacy.language import Language

    if "milr_test_parse" not in Language.factories:
        @Language.component("milr_test_parse")
        def _parse(doc):  # stands in for en_core_web_sm's tagger and parser on the one test sentence
            for tok, (pos, dep, head) in zip(doc, PARSE):
                tok.pos_, tok.dep_, tok.head = pos, dep, doc[head]
            return doc

    nlp = spacy.blank("en")
    nlp.add_pipe("milr_test_parse")
    nlp.to_disk(tmp_path / "tiny_spacy")
    analyzer = load_analyzer(str(tmp_path / "tiny_spacy"))
    prompt = "a green bench and a red car"
    assert analyzer.noun_chunks(prompt) == ["a green bench", "a red car"]
    assert [t.pos for t in analyzer.tokens(prompt)] == [p for p, _, _ in PARSE]
    assert blip_questions(analyzer, prompt) == ["a green bench?", "a red car?"]
    assert without_adjectives(analyzer, prompt) == "a bench and a car"


def test_preflight_checks_chunker_weights_and_lists(tiny_blip, tiny_clip, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    blip = CRITICS.get("t2i_blip_vqa")
    blip.preflight({"checkpoint": str(tiny_blip)})
    with pytest.raises(FileNotFoundError, match="en_core_web_sm"):
        blip.preflight({"checkpoint": str(tiny_blip), "chunker": str(tmp_path / "en_core_web_sm")})
    with pytest.raises(FileNotFoundError, match="Salesforce/blip-vqa-capfilt-large"):
        blip.preflight({})
    arch, weights = tiny_clip
    three = CRITICS.get("t2i_3in1")
    parts = {"blip": {"checkpoint": str(tiny_blip)}, "clip": {"arch": arch, "pretrained": weights},
             "spatial": {"detector": {"name": "detector", "weights": str(tmp_path / "missing-yolo")}}}
    with pytest.raises(FileNotFoundError, match="missing-yolo"):  # the spatial part's detector is checked
        three.preflight(parts)
    (tmp_path / "yolo.pt").write_bytes(b"")  # preflight resolves the file, never loads it
    parts["spatial"] = {"detector": {"name": "detector", "weights": str(tmp_path / "yolo.pt")}}
    with pytest.raises(FileNotFoundError, match="complex_val_spatial.txt"):
        three.preflight({**parts, "prompt_lists": str(tmp_path)})
    (tmp_path / "complex_val_spatial.txt").write_text("a\r\n")
    (tmp_path / "complex_val_action.txt").write_text("b\r\n")
    three.preflight({**parts, "prompt_lists": str(tmp_path)})
