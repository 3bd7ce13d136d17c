"""Janus-Pro adapter (``milr.models.janus_pro``) on a tiny random Janus saved to disk and loaded back.

The checkpoint (config + safetensors + tokenizer + processor) is written to a temporary folder and
loaded through ``JanusPro(checkpoint=<folder>)``, the same ``from_pretrained`` path a real
Janus-Pro-1B/7B takes. Reference behaviour is transformers' own ``JanusForConditionalGeneration``:
``generate(generation_mode="image")``, ``generate()`` for text, ``decode_image_tokens``.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import yaml

from mug_conformance import CHECKS, MUGConformance

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    LlamaTokenizerFast,
    PreTrainedTokenizerFast,
)

from milr.models.janus_pro import (  # noqa: E402
    CHAT_ROLES,
    REASONING_SYSTEM_PROMPT,
    REASONING_TEMPLATE,
    JanusPro,
    deepseek_sft_prompt,
    reasoning_prompt,
)

SPECIALS = ["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>",
            "<image_placeholder>", "<begin_of_image>", "<end_of_image>"]
UNK, BOS, EOS, PAD, IMG, BOI, EOI = range(7)
VOCAB = 512
PROMPTS = ["a red cube", "a photo of a blue dog on the left of a green cat"]
QUESTIONS = ["is there a red cube ?", "is the dog blue ?"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Janus's special tokens, built offline.

    Its class depends on the transformers version: 4.5x's ``JanusProcessor`` accepts only
    ``LlamaTokenizerFast`` (the real checkpoints' class), while 5.x re-derives a ``LlamaTokenizer``
    from the vocabulary on load (a BPE with Metaspace) and would lose the word-level model, so there
    the generic fast tokenizer (saved as ``TokenizersBackend``) is used.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    pre = pre_tokenizers.Whitespace()
    corpus = [REASONING_TEMPLATE, REASONING_SYSTEM_PROMPT, "User Assistant <|User|>: <|Assistant|>: . , Yes No yes no"]
    corpus += PROMPTS + QUESTIONS + ["You are a helpful language and vision assistant . understand visual content"]
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for text in corpus:
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    filler = 0
    while len(vocab) < VOCAB:
        vocab.setdefault(f"w{filler}", len(vocab))
        filler += 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS[UNK]))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.post_processor = TemplateProcessing(single=f"{SPECIALS[BOS]} $A", special_tokens=[(SPECIALS[BOS], BOS)])
    major = int(transformers.__version__.split(".")[0])
    cls, extra = (LlamaTokenizerFast, {"add_bos_token": True, "legacy": True}) if major < 5 else (PreTrainedTokenizerFast, {})
    tok = cls(
        tokenizer_object=tk, unk_token=SPECIALS[UNK], bos_token=SPECIALS[BOS], eos_token=SPECIALS[EOS],
        pad_token=SPECIALS[PAD], padding_side="left", **extra,
        extra_special_tokens={"image_token": SPECIALS[IMG], "boi_token": SPECIALS[BOI], "eoi_token": SPECIALS[EOI]},
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[IMG:]})
    return tok


def tiny_config() -> JanusConfig:
    """dependencies.md section 2: Llama 64 hidden / 4 layers / vocab 512; vision 64 px, patch 16
    (16 image tokens); VQ base_channels 32, channel_multiplier [1, 1, 2, 2, 4], 256 codes."""
    return JanusConfig(
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=512,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
                           projection_dim=64, num_image_tokens=16),
        vq_config=dict(embed_dim=8, num_embeddings=256, base_channels=32, channel_multiplier=[1, 1, 2, 2, 4],
                       num_res_blocks=1, latent_channels=32, projection_dim=64, image_token_embed_dim=64),
        image_token_id=IMG,
    )


def save_tiny_janus(folder) -> None:
    """Write a complete tiny checkpoint folder, as a real Janus-Pro checkpoint is laid out."""
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(tiny_config()).eval()
    model.generation_config.bos_token_id = BOS
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(folder)
    processor = JanusProcessor(JanusImageProcessor(size={"height": 64, "width": 64}), build_tokenizer(), num_image_tokens=16)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-janus")
    save_tiny_janus(folder)
    return folder


@pytest.fixture(scope="module")
def janus(tiny_path):
    return JanusPro(checkpoint=str(tiny_path), device="cpu", dtype="float32", max_text_tokens=8)


@pytest.fixture(scope="module")
def ref(tiny_path):
    """transformers' model, loaded independently of the adapter."""
    return JanusForConditionalGeneration.from_pretrained(tiny_path).eval()


def hf_image_generate(ref, ids, mask, num_samples=1, do_sample=True, **settings):
    """generate(generation_mode="image"); ``top_k=0`` unless given, as the adapter's default samples
    from the full distribution (generate() otherwise applies its global default top_k=50)."""
    settings.setdefault("top_k", 0)
    gc = copy.deepcopy(ref.generation_config)
    gc.generation_kwargs = {"boi_token_id": BOI}  # the tiny checkpoint's BOI (a real one's config carries it)
    gc.guidance_scale = 5.0
    gc.do_sample = do_sample
    gc.num_return_sequences = num_samples
    for k, v in settings.items():
        setattr(gc, k, v)
    return ref.generate(input_ids=ids, attention_mask=mask, generation_config=gc, generation_mode="image")


# -- loading -------------------------------------------------------------------------------------------
def test_loads_checkpoint_folder_with_its_shapes(janus):
    assert janus.image_tokens == 16 and janus.hidden_size == 64 and janus.codebook_size == 256
    assert (janus.default_cfg, janus.default_temperature) == (5.0, 1.0)
    assert janus.dtype == torch.float32 and janus.device.type == "cpu"
    assert (janus.bos_id, janus.eos_id, janus.pad_id, janus.boi_id) == (BOS, EOS, PAD, BOI)
    assert not any(p.requires_grad for p in janus.model.parameters())
    # The tokenizer survived the save/load round trip (word-level, not re-derived from the vocab).
    ids = janus.tokenizer("a red cube", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and janus.decode_text(torch.tensor(ids)) == "a red cube"


def test_registered_under_its_name(janus):
    from milr.registry import MODELS

    assert MODELS.get("janus-pro") is JanusPro
    assert MODELS.card("janus-pro").image_tokens == 576
    # The loaded instance's card describes its own checkpoint.
    assert (janus.card.image_tokens, janus.card.hidden_size) == (16, 64) and janus.card.weights == str(janus.source)


def test_uncached_hub_name_fails_at_once_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache") as err:
        JanusPro(checkpoint="deepseek-community/Janus-Pro-7B", device="cpu")
    assert time.perf_counter() - t0 < 5
    assert "hf download deepseek-community/Janus-Pro-7B" in str(err.value) and "checkpoint: /path/to" in str(err.value)


@pytest.mark.parametrize("bad, match", [("/no/such/folder", "no such folder"), ("not-a-hub-name", "owner/name")])
def test_bad_model_argument(bad, match):
    with pytest.raises(FileNotFoundError, match=match):
        JanusPro(checkpoint=bad, device="cpu")


def test_bad_dtype(tiny_path):
    with pytest.raises(ValueError, match="unknown dtype"):
        JanusPro(checkpoint=str(tiny_path), device="cpu", dtype="int8")


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        JanusPro(checkpoint=str(tmp_path), device="cpu")


# -- prompts -------------------------------------------------------------------------------------------
def test_reasoning_prompt_is_the_authors_sft_format():
    text = reasoning_prompt("a red cube")
    assert text == (
        f"{REASONING_SYSTEM_PROMPT}\n\nUser: {REASONING_TEMPLATE.format('a red cube')}\n\nAssistant:"
    )
    assert '"a red cube"' in text and "6. Do not elaborate" in text


def test_image_prompt_rows(janus):
    """Cond row: SFT prompt with empty system prompt, then BOI; uncond row: only BOS and BOI kept."""
    state = janus.encode_prompts(PROMPTS)
    ctx = janus.image_context(state, ["a plan", "another plan"])
    assert ctx.texts == [f"{PROMPTS[0]}. a plan", f"{PROMPTS[1]}. another plan"]
    ids, mask = ctx.prefix.input_ids, ctx.prefix.attention_mask
    b = len(PROMPTS)
    expect = janus.processor(text=[deepseek_sft_prompt(t) for t in ctx.texts], generation_mode="image",
                             return_tensors="pt", padding=True)
    assert torch.equal(ids[:b], expect["input_ids"]) and torch.equal(mask[:b], expect["attention_mask"])
    assert (expect["input_ids"][:, -1] == BOI).all()
    assert janus.tokenizer.decode(ids[0]).count(CHAT_ROLES[0].strip("<|>")) == 1
    uncond = ids[b:]
    real = mask[b:].bool()
    assert torch.equal(mask[b:], mask[:b])
    kept = uncond[real]
    assert set(kept.tolist()) == {BOS, BOI, PAD}
    assert ((uncond == BOS).sum(-1) == 1).all() and (uncond[:, -1] == BOI).all()


# -- parity with transformers ----------------------------------------------------------------------------
def _cond_inputs(ctx):
    b = ctx.batch
    return ctx.prefix.input_ids[:b], ctx.prefix.attention_mask[:b]


@pytest.mark.parametrize("num_samples", [1, 3])
def test_sampled_image_tokens_equal_generate(janus, ref, num_samples):
    """Same global seed -> the same tokens as generate(generation_mode="image", do_sample=True)."""
    ctx = janus.image_context(janus.encode_prompts(PROMPTS[:1]), ["a plan"])
    ids, mask = _cond_inputs(ctx)
    torch.manual_seed(1234)
    expect = hf_image_generate(ref, ids, mask, num_samples=num_samples)
    torch.manual_seed(1234)
    got = janus.sample_image(ctx, num_samples=num_samples, generator=None, return_hidden=False)
    assert torch.equal(got.tokens, expect)
    # A CPU generator seeded alike draws the same stream as the seeded global generator.
    got_g = janus.sample_image(ctx, num_samples=num_samples, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(got_g.tokens, expect)


def test_sampled_parity_two_prompts_and_temperature(janus, ref):
    """Several prompts of equal length in one batch, and a temperature other than 1."""
    ctx = janus.image_context(janus.encode_prompts(["a red cube", "a blue dog"]))
    assert ctx.prefix.attention_mask.all()  # no padding: generate() gives pads no position ids
    ids, mask = _cond_inputs(ctx)
    torch.manual_seed(7)
    expect = hf_image_generate(ref, ids, mask, num_samples=2, temperature=0.7)
    got = janus.sample_image(ctx, num_samples=2, temperature=0.7, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got.tokens, expect)


def test_top_k_matches_plain_generate_defaults(janus, ref, monkeypatch):
    """With ``top_k=50`` the adapter reproduces a generate() call that leaves top_k at its default."""
    ctx = janus.image_context(janus.encode_prompts(PROMPTS[:1]))
    ids, mask = _cond_inputs(ctx)
    gc = copy.deepcopy(ref.generation_config)
    gc.generation_kwargs, gc.guidance_scale, gc.do_sample, gc.temperature = {"boi_token_id": BOI}, 5.0, True, 0.7
    torch.manual_seed(99)
    expect = ref.generate(input_ids=ids, attention_mask=mask, generation_config=gc, generation_mode="image")
    monkeypatch.setattr(janus, "top_k", 50)
    got = janus.sample_image(ctx, temperature=0.7, generator=torch.Generator().manual_seed(99))
    assert torch.equal(got.tokens, expect)
    monkeypatch.setattr(janus, "top_k", None)
    full = janus.sample_image(ctx, temperature=0.7, generator=torch.Generator().manual_seed(99))
    assert not torch.equal(full.tokens, expect)  # the setting matters on this model


def test_greedy_image_tokens_equal_generate_with_padding(janus, ref):
    """Left-padded prompts of different lengths: greedy tokens match generate() row by row."""
    ctx = janus.image_context(janus.encode_prompts(PROMPTS))
    assert not ctx.prefix.attention_mask.all()
    ids, mask = _cond_inputs(ctx)
    expect = hf_image_generate(ref, ids, mask, do_sample=False)
    got = janus.sample_image(ctx, temperature=0.0)
    assert torch.equal(got.tokens, expect)


def test_image_hidden_are_generation_head_inputs(janus, ref):
    """hidden[r, i] (cond, uncond) = final-normed last-layer state of a full teacher-forced pass."""
    ctx = janus.image_context(janus.encode_prompts(PROMPTS[:1]))
    res = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(0))
    ids, mask = ctx.prefix.input_ids, ctx.prefix.attention_mask  # [cond, uncond]
    for row in range(2):
        toks = res.tokens[row : row + 1].repeat(2, 1)
        embeds = torch.cat([ref.get_input_embeddings()(ids), ref.prepare_embeddings_for_image_generation(toks[:, :-1])], 1)
        full_mask = torch.cat([mask, mask.new_ones(2, toks.shape[1] - 1)], 1)
        with torch.no_grad():
            states = ref.model.language_model(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
        expect = states[:, ids.shape[1] - 1 :].permute(1, 0, 2)  # [N, 2, H]
        torch.testing.assert_close(res.hidden[row], expect, atol=1e-5, rtol=1e-5)
        # The logits the tokens were sampled from are the head of those states.
        torch.testing.assert_close(janus.image_head(expect[:, 0]), ref.model.generation_head(expect[:, 0]))


def test_decoded_pixels_match_decode_image_tokens(janus, ref):
    ctx = janus.image_context(janus.encode_prompts(PROMPTS))
    tokens = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(3)).tokens
    pixels = janus.decode_image(tokens)
    with torch.no_grad():
        raw = ref.decode_image_tokens(tokens)  # [R, H, W, 3], about [-1, 1]
    assert pixels.shape == (4, 3, 64, 64)
    torch.testing.assert_close(pixels, ((raw.permute(0, 3, 1, 2) + 1) / 2).clamp(0, 1))
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_greedy_reasoning_equals_generate_text(janus, ref, monkeypatch):
    monkeypatch.setattr(janus, "plan_cache", 0)  # compare a fresh decoding, not a remembered one
    state = janus.encode_prompts(PROMPTS)
    got = janus.reason(state, max_new_tokens=8)
    expect_ids = janus.tokenizer([reasoning_prompt(p) for p in PROMPTS], padding=True, padding_side="left",
                                 return_tensors="pt")
    assert torch.equal(state.prefix.input_ids, expect_ids["input_ids"])
    out = ref.generate(**expect_ids, generation_mode="text", do_sample=False, max_new_tokens=8)
    new = out[:, expect_ids["input_ids"].shape[1] :]
    for r in range(len(PROMPTS)):
        row = new[r].tolist()
        row = row[: row.index(EOS)] if EOS in row else row
        assert got.ids[r].tolist() == row
        assert got.texts[r] == janus.tokenizer.decode(row, skip_special_tokens=True).strip()


def test_text_hidden_are_lm_head_inputs(janus, ref, monkeypatch):
    monkeypatch.setattr(janus, "plan_cache", 0)  # compare a fresh decoding, not a remembered one
    state = janus.encode_prompts(PROMPTS[:1])
    res = janus.reason(state, max_new_tokens=6)
    ids = torch.cat([state.prefix.input_ids[0], res.ids[0][:-1]])[None]
    with torch.no_grad():
        states = ref.model.language_model(input_ids=ids).last_hidden_state[0]
    expect = states[state.prefix.input_ids.shape[1] - 1 :]
    torch.testing.assert_close(res.hidden[0], expect, atol=1e-5, rtol=1e-5)


def test_forced_text_prefix_is_continued_greedily(janus, monkeypatch):
    monkeypatch.setattr(janus, "plan_cache", 0)  # decode every call: the comparison below is between decodings
    state = janus.encode_prompts(PROMPTS)
    forced = [torch.tensor([20, 21, 22]), torch.tensor([30])]
    res = janus.reason(state, prefix_ids=forced, max_new_tokens=6)
    for r, f in enumerate(forced):
        assert res.ids[r][: len(f)].tolist() == f.tolist()
        assert len(res.ids[r]) <= 6
    # Feeding the whole forced prefix at once equals forcing it one token at a time.
    one = janus.reason(janus.encode_prompts(PROMPTS[:1]), prefix_ids=forced[:1], max_new_tokens=6)
    assert one.ids[0].tolist() == res.ids[0].tolist()
    torch.testing.assert_close(one.hidden[0], res.hidden[0], atol=1e-5, rtol=1e-5)


def test_prompt_prefix_is_encoded_once_and_not_mutated(janus, monkeypatch):
    ctx = janus.image_context(janus.encode_prompts(PROMPTS[:1]))
    before = [k.clone() for k, _ in ctx.prefix.kv]
    calls = []
    original = janus._encode
    monkeypatch.setattr(janus, "_encode", lambda *a: calls.append(1) or original(*a))
    a = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(5))
    b = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(5))
    assert calls == [] and torch.equal(a.tokens, b.tokens)
    assert all(torch.equal(x, k) for x, (k, _) in zip(before, ctx.prefix.kv))


def test_bad_inputs_are_rejected(janus):
    state = janus.encode_prompts(PROMPTS[:1])
    ctx = janus.image_context(state)
    with pytest.raises(ValueError, match=r"\[R, L\]"):
        janus.sample_image(ctx, num_samples=2, prefix_tokens=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="codebook"):
        janus.sample_image(ctx, prefix_tokens=torch.full((1, 2), 999))
    with pytest.raises(TypeError, match="image_context"):
        janus.sample_image(state)
    with pytest.raises(ValueError, match="plans"):
        janus.image_context(state, ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        janus.encode_prompts([])
    with pytest.raises(ValueError, match="questions"):
        janus.yes_probability(torch.rand(2, 3, 64, 64), ["only one"])


# -- shared MUGModel conformance -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conformance(janus):
    return MUGConformance(janus, prompts=PROMPTS, questions=QUESTIONS, max_new_tokens=6)


@pytest.mark.parametrize("check", CHECKS)
def test_conformance(conformance, check):
    conformance.run(check)


# -- a MILR run from a recipe --------------------------------------------------------------------------------
def test_milr_run_from_recipe(tiny_path, tmp_path):
    from milr.records import RunRecord
    from milr.runner import run_recipe

    data = {
        "model": {"name": "janus-pro", "checkpoint": str(tiny_path), "max_text_tokens": 6},
        # Janus judges its own images through yes_probability (the understanding path).
        "critics": [{"name": "self_judge", "questions": "prompt"}],
        "search": {"name": "reinforce", "mode": "both", "steps": 3, "text_fraction": 0.2, "image_fraction": 0.02},
        "prompts": {"inline": ["a red cube"]},
        "run": {"seed": 0, "device": "cpu", "dtype": "float32", "output_dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "janus-tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = run_recipe(path, progress=False)
    (result,) = RunRecord(run_dir).results()
    assert result["steps"] >= 2 and result["budget"]["image_tokens"] > 0 and result["budget"]["text_tokens"] > 0
    assert 0.0 <= result["final"]["reward"] <= 1.0 and result["initial"]["text"]  # a plan was written
    assert (run_dir / result["images"]["final"]).is_file()
