"""Ensembles (normalisation, weights, gates, cascades) and the score cache (calls counted)."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import warnings

import numpy as np
import pytest
import torch

from milr.critics.cache import CachedCritic, ScoreCache
from milr.critics.ensemble import Ensemble, load_reference
from milr.interfaces import Critic
from milr.registry import CRITICS
from doubles import write_tiny_clip_config


class ChannelCritic(Critic):
    """Reward = scale * mean of one colour channel + shift; counts the images it scores."""

    def __init__(self, channel: int = 0, scale: float = 1.0, shift: float = 0.0):
        self.channel, self.scale, self.shift = channel, scale, shift
        self.init_args = {"channel": channel, "scale": scale, "shift": shift}
        self.calls = 0  # images scored
        self.batches = 0

    def score(self, images, prompts, metadata=None):
        self.calls += len(images)
        self.batches += 1
        return images[:, self.channel].float().mean(dim=(1, 2)) * self.scale + self.shift


def rand_images(n, seed=0, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ref_set(n=64, seed=1):
    return {"images": rand_images(n, seed), "prompts": ["p"] * n}


# ---------------------------------------------------------------------------------------------
# Normalisation: scores on very different scales contribute as their weights say
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["zscore", "rank"])
def test_normalised_members_contribute_by_weight(normalize):
    small, big = ChannelCritic(0, scale=1.0), ChannelCritic(1, scale=1000.0, shift=500.0)
    ref = ref_set()
    ens = Ensemble([small, big], weights=[2.0, 1.0], names=["small", "big"], normalize=normalize, reference=ref)
    # On the reference distribution each weighted component spreads by its weight times one unit.
    x = ref["images"]
    ens.score(x, ref["prompts"])
    spread_small = (2.0 * ens.last_components["small"]).std()
    spread_big = (1.0 * ens.last_components["big"]).std()
    assert spread_small / spread_big == pytest.approx(2.0, rel=1e-4)
    # And on new images, too, up to sampling noise of the 64-image reference.
    ens.score(rand_images(200, seed=7), ["p"] * 200)
    ratio = (2.0 * ens.last_components["small"]).std() / ens.last_components["big"].std()
    assert 1.4 < ratio < 2.8
    plain = Ensemble([small, big], weights=[2.0, 1.0], names=["small", "big"])
    plain.score(x, ref["prompts"])
    raw_ratio = (2.0 * plain.last_components["small"]).std() / plain.last_components["big"].std()
    assert raw_ratio < 0.01  # without normalisation the x1000 critic drowns the other


def test_zscore_and_rank_values_against_reference():
    c = ChannelCritic(0, scale=10.0)
    ref = ref_set(50)
    raw_ref = c.score(ref["images"], ref["prompts"])
    z = Ensemble([c], normalize="zscore", reference=ref)
    r = Ensemble([c], normalize="rank", reference=ref)
    x = rand_images(5, seed=3)
    raw = c.score(x, ["p"] * 5)
    expect_z = (raw - raw_ref.mean()) / raw_ref.std(unbiased=False)
    assert torch.allclose(z.score(x, ["p"] * 5), expect_z, atol=1e-5)
    expect_r = torch.tensor([float((raw_ref < v).sum()) / 50 for v in raw])  # no ties with continuous scores
    assert torch.allclose(r.score(x, ["p"] * 5), expect_r, atol=1e-6)
    # A reference image scores its own mid-rank: the minimum gets 0.5/N.
    assert float(r.score(ref["images"][raw_ref.argmin()][None], ["p"])) == pytest.approx(0.5 / 50)


def test_affine_and_per_member_normalisation():
    a, b = ChannelCritic(0), ChannelCritic(1)
    ens = Ensemble([a, b], names=["a", "b"], normalize={"a": {"type": "affine", "scale": 3.0, "shift": -1.0}})
    x = rand_images(4)
    out = ens.score(x, ["p"] * 4)
    assert torch.allclose(out, 3.0 * a.score(x, ["p"] * 4) - 1.0 + b.score(x, ["p"] * 4), atol=1e-6)
    with pytest.raises(ValueError, match="unknown members"):
        Ensemble([a, b], names=["a", "b"], normalize={"c": "rank"})
    with pytest.raises(ValueError, match="unknown normalisation"):
        Ensemble([a], normalize="minmax")


def test_zscore_without_reference_is_an_error_not_a_first_batch_fit():
    """Issue 11: statistics come from a reference set, never from the first images scored."""
    with pytest.raises(ValueError, match="needs a reference"):
        Ensemble([ChannelCritic(0)], normalize="zscore")
    with pytest.raises(ValueError, match="needs a reference"):
        Ensemble([ChannelCritic(0), ChannelCritic(1)], names=["a", "b"], normalize={"b": "rank"})


def test_reference_folders(tmp_path):
    from PIL import Image

    imgs = (rand_images(3, seed=4) * 255).round() / 255  # exactly representable as PNG
    lines = []
    for i, im in enumerate(imgs):
        arr = (im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "prompt": f"prompt {i}", "metadata": {"tag": "colors"}}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    x, prompts, md = load_reference(tmp_path)
    assert torch.allclose(x, imgs, atol=1e-6) and prompts == ["prompt 0", "prompt 1", "prompt 2"]
    assert md[0] == {"tag": "colors"}
    # A run folder of the runner: initial and final images of each result line.
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(run / "images" / f"{i}.png")
    rec = {"prompt": "a circle", "metadata": {"tag": "single_object"}, "images": {"initial": "images/0.png", "final": "images/1.png"}}
    (run / "results.jsonl").write_text(json.dumps(rec) + "\n{\"torn")
    x, prompts, md = load_reference(run)
    assert x.shape == (2, 3, 8, 8) and prompts == ["a circle"] * 2 and float(x[1].mean()) == pytest.approx(40 / 255)
    with pytest.raises(ValueError, match="holds no images"):
        load_reference(tmp_path / "run" / "images")


# ---------------------------------------------------------------------------------------------
# Modes, gates, cascades, specs
# ---------------------------------------------------------------------------------------------
def test_min_and_product_modes():
    a, b = ChannelCritic(0), ChannelCritic(1)
    x = rand_images(6)
    sa, sb = a.score(x, ["p"] * 6), b.score(x, ["p"] * 6)
    mn = Ensemble([a, b], weights=[1.0, 2.0], mode="min").score(x, ["p"] * 6)
    assert torch.allclose(mn, torch.minimum(sa, 2 * sb))
    pr = Ensemble([a, b], weights=[1.0, 0.5], mode="product").score(x, ["p"] * 6)
    assert torch.allclose(pr, sa * sb.sqrt(), atol=1e-6)
    with pytest.raises(ValueError, match="signed"):
        Ensemble([a, b], mode="product", normalize="zscore", reference=ref_set())
    neg = Ensemble([ChannelCritic(0, shift=-5.0)], mode="product")
    with pytest.raises(ValueError, match="negative normalised scores"):
        neg.score(x, ["p"] * 6)


def test_gates_override_weights_by_tag():
    a, b = ChannelCritic(0), ChannelCritic(1)
    ens = Ensemble([a, b], names=["objects", "colour"], gates={"colors": {"colour": 3.0}, "counting": {"colour": 0.0}})
    x = rand_images(3)
    md = [{"tag": "colors"}, {"tag": "counting"}, {"tag": "position"}]
    out = ens.score(x, ["p"] * 3, md)
    sa, sb = a.score(x, ["p"] * 3), b.score(x, ["p"] * 3)
    assert torch.allclose(out, torch.stack([sa[0] + 3 * sb[0], sa[1], sa[2] + sb[2]]))
    assert ens.last_weights.tolist() == [[1.0, 3.0], [1.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="unknown members"):
        Ensemble([a, b], names=["objects", "colour"], gates={"colors": {"color": 3.0}})


def test_cascade_sends_only_top_k_to_expensive_members():
    cheap, expensive = ChannelCritic(0), ChannelCritic(1, scale=10.0)
    ens = Ensemble([cheap, expensive], names=["cheap", "expensive"], cascade={"cheap": "cheap", "keep_top": 2})
    x = rand_images(8, seed=5)
    prompts = ["a"] * 4 + ["b"] * 4  # prompt-major: two prompts, four candidates each
    out = ens.score(x, prompts)
    assert cheap.calls == 8 and expensive.calls == 4  # top-2 of each prompt
    c = cheap.score(x, prompts)
    for g in (range(0, 4), range(4, 8)):
        g = list(g)
        kept = sorted(g, key=lambda j: -float(c[j]))[:2]
        assert [bool(ens.last_scored["expensive"][j]) for j in g] == [j in kept for j in g]
        worst_kept = min(float(out[j]) for j in kept)
        assert all(float(out[j]) <= worst_kept + 1e-6 for j in g if j not in kept)
        assert all(torch.isnan(ens.last_raw["expensive"][j]) for j in g if j not in kept)
    with pytest.raises(ValueError, match="cheap member"):
        Ensemble([cheap, expensive], names=["cheap", "expensive"], cascade={"cheap": "cheapest", "keep_top": 1})


def test_members_built_from_specs_with_model_injected():
    from toy_mug import ToyMUG

    mug = ToyMUG()
    ens = Ensemble(
        [{"name": "doubles:BrightnessCritic", "weight": 2.0, "id": "bright", "scale": 3.0},
         {"name": "self_judge", "questions": "prompt", "weight": 0.5}],
        model=mug,
    )
    assert ens.names == ["bright", "self_judge"] and ens.weights == [2.0, 0.5]
    assert ens.critics[1].model is mug
    x = rand_images(2)
    out = ens.score(x, ["a red circle"] * 2, [{}, {}])
    expect = 2.0 * 3.0 * x.mean(dim=(1, 2, 3)) + 0.5 * ens.last_components["self_judge"]
    assert torch.allclose(out, expect, atol=1e-6)
    with pytest.raises(Exception, match="no_such_critic"):
        Ensemble([{"name": "no_such_critic"}])
    with pytest.raises(ValueError, match="2 weights for 1 members"):
        Ensemble([ChannelCritic()], weights=[1.0, 2.0])


def test_ensemble_from_runner_recipe_combine():
    """The runner builds members itself and passes combine: {...} to Ensemble."""
    from milr.recipe import load_recipe
    from milr.runner import build_critics

    recipe = load_recipe({
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "doubles:BrightnessCritic", "weight": 1.0},
                    {"name": "doubles:BrightnessCritic", "weight": 3.0, "scale": 1000.0}],
        "combine": {"mode": "sum", "normalize": "rank", "reference": ref_set(32)},
        "search": {"name": "best_of_n"},
        "prompts": {"inline": ["a red circle"]},
    }, check_components=False)
    combined, members, _ = build_critics(recipe, None, "cpu")
    assert isinstance(combined, Ensemble) and combined.weights == [1.0, 3.0]
    out = combined.score(rand_images(4), ["a red circle"] * 4, [{}] * 4)
    # Both members rank images by brightness, so after rank normalisation the sum is 4x one rank.
    assert torch.allclose(out, 4.0 * combined.last_components[combined.names[0]], atol=1e-6)


def test_ensemble_identity_tracks_configuration():
    a, b = ChannelCritic(0), ChannelCritic(1)
    assert Ensemble([a, b], weights=[1, 2]).identity() != Ensemble([a, b], weights=[2, 1]).identity()
    assert Ensemble([a, b]).identity() == Ensemble([a, b]).identity()
    assert Ensemble([a, b], normalize="rank", reference=ref_set(8, seed=1)).identity() != \
        Ensemble([a, b], normalize="rank", reference=ref_set(8, seed=2)).identity()


# ---------------------------------------------------------------------------------------------
# Score cache
# ---------------------------------------------------------------------------------------------
def test_cache_skips_repeated_images_and_scores_new_keys():
    critic = ChannelCritic(0)
    cached = CachedCritic(critic)
    x = rand_images(2)
    batch = torch.stack([x[0], x[1], x[0]])
    out = cached.score(batch, ["p"] * 3, [{}] * 3)
    assert critic.calls == 2  # the repeated image in the batch is scored once
    assert torch.allclose(out, critic.score(batch, ["p"] * 3))
    critic.calls = 0
    cached.score(x, ["p", "p"], [{}, {}])
    assert critic.calls == 0  # both seen before
    cached.score(x[:1], ["another prompt"], [{}])
    assert critic.calls == 1  # a different prompt is a different key
    other = ChannelCritic(0, scale=2.0)  # a different identity (arguments)
    shared = CachedCritic(other, cached.cache)
    assert torch.allclose(shared.score(x, ["p", "p"]), 2 * critic.score(x, ["p", "p"]))
    assert other.calls == 2


def test_cache_keys_on_quantised_pixels_or_tokens():
    critic = ChannelCritic(0)
    cached = CachedCritic(critic)
    x = torch.full((1, 3, 4, 4), 0.5)
    cached.score(x, ["p"])
    cached.score(x + 1e-4, ["p"])  # same uint8 image
    assert critic.calls == 1
    cached.score(x + 0.01, ["p"])
    assert critic.calls == 2
    tokens = torch.tensor([[3, 1, 4, 1]])
    cached.score(rand_images(1, seed=1), ["p"], tokens=tokens)
    cached.score(rand_images(1, seed=2), ["p"], tokens=tokens)  # same tokens -> same image
    assert critic.calls == 3


def test_cache_bypassed_for_gradients():
    critic = ChannelCritic(0)
    cached = CachedCritic(critic)
    x = rand_images(1).requires_grad_(True)
    cached.score(x, ["p"]).sum().backward()
    cached.score(x, ["p"])
    assert critic.calls == 2 and x.grad is not None


def test_disk_cache_survives_rerun_and_torn_line(tmp_path):
    critic = ChannelCritic(0)
    x = rand_images(3)
    CachedCritic(critic, cache_dir=tmp_path).score(x, ["p"] * 3)
    assert critic.calls == 3
    with open(tmp_path / "scores.jsonl", "a") as f:
        f.write('{"k": "abc", "v": 0.')  # a run killed mid-write
    again = CachedCritic(critic, cache_dir=tmp_path)
    assert len(again.cache) == 3
    out = again.score(x, ["p"] * 3)
    assert critic.calls == 3 and torch.allclose(out, critic.score(x, ["p"] * 3))
    again.score(rand_images(1, seed=8), ["p"])  # appended after the torn line, on its own line
    assert len(ScoreCache(tmp_path)) == 4


def test_cache_clear_forgets_memory_and_keeps_the_disk_file(tmp_path):
    critic = ChannelCritic(0)
    cached = CachedCritic(critic, cache_dir=tmp_path)
    x = rand_images(2)
    cached.score(x, ["p", "p"])
    cached.score(x, ["p", "p"])
    assert critic.calls == 2 and cached.cache.hits == 2
    cached.cache.clear()
    assert len(cached.cache) == 0 and cached.cache.hits == cached.cache.misses == 0
    cached.score(x, ["p", "p"])  # scored again by the critic itself
    assert critic.calls == 4
    assert len(ScoreCache(tmp_path)) == 2  # the file still holds both keys


def _append_many(args):
    cache_dir, worker = args
    cache = ScoreCache(cache_dir)
    for i in range(100):
        cache.put(f"w{worker}-{i}", float(i))


def test_disk_cache_concurrent_appends(tmp_path):
    ctx = mp.get_context("spawn" if not hasattr(__import__("os"), "fork") else "fork")
    with ctx.Pool(2) as pool:
        pool.map(_append_many, [(str(tmp_path), 0), (str(tmp_path), 1)])
    lines = (tmp_path / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["k"] for line in lines)
    assert len(ScoreCache(tmp_path)) == 200


def test_cached_clip_score_identity_includes_weights(tmp_path):
    """Two checkpoints of one architecture never share cache entries."""
    from milr.critics.clip_score import CLIPScore, load_open_clip

    cfg = write_tiny_clip_config(tmp_path / "milr-cache-tiny-clip.json", image_size=16)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m, _, _ = load_open_clip(str(cfg), None)
        paths.append(tmp_path / f"w{seed}.pt")
        torch.save(m.state_dict(), paths[-1])
    (tmp_path / "same.pt").write_bytes(paths[0].read_bytes())
    a = CLIPScore(arch=str(cfg), pretrained=str(paths[0]))
    b = CLIPScore(arch=str(cfg), pretrained=str(paths[1]))
    a.init_args = b.init_args = {"arch": "tiny"}  # as the runner resets them to the recipe's args
    assert a.identity() != b.identity()
    cache = ScoreCache()
    x = rand_images(2, size=16)
    sa = CachedCritic(a, cache).score(x, ["p", "q"])
    sb = CachedCritic(b, cache).score(x, ["p", "q"])
    assert len(cache) == 4 and not torch.allclose(sa, sb)


# ---------------------------------------------------------------------------------------------
# The shipped ensemble recipe
# ---------------------------------------------------------------------------------------------
def _ensemble_recipe() -> dict:
    import yaml

    from milr.recipe import resolve_recipe_path

    return yaml.safe_load(resolve_recipe_path("ensemble-minimug").read_text())


def test_ensemble_recipe_validates_and_combines_three_critics():
    from milr.recipe import load_recipe

    recipe = load_recipe("ensemble-minimug")  # names and every argument checked against signatures
    assert len(recipe.critics) >= 3
    assert set(recipe.combine) >= {"mode", "normalize", "gates", "cascade"}


def test_ensemble_recipe_runs_through_the_runner(tmp_path):
    """The recipe's combine block end to end (runner -> cached members -> Ensemble) on world
    prompts, with stand-ins for the two shipped weights it needs: ToyMUG (32 px) for MiniMUG and a
    tiny random CLIP under the member name world_clip's place."""
    import yaml

    from milr.runner import run_recipe

    cfg = write_tiny_clip_config(tmp_path / "milr-recipe-tiny-clip.json")
    data = _ensemble_recipe()
    data["model"] = {"name": "toy_mug:ToyMUG", "image_size": 32}
    text = yaml.safe_dump(data).replace("world_clip", "clip_score")
    data = yaml.safe_load(text)
    data["critics"][2]["arch"] = str(cfg)
    data["critics"][2]["pretrained"] = "random"  # random weights must be asked for (issue 15)
    data["search"] = {"name": "best_of_n", "n": 6, "batch_size": 6, "reasoning": False}
    data["prompts"] = {"suite": "minimug-world", "split": "test", "tags": ["colors", "position"], "per_tag": 1}
    data["run"].update(output_dir=str(tmp_path / "runs"), name="ens")
    run_dir = run_recipe(data, progress=False, log=lambda s: None)
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2
    for r in results:
        assert set(r["final"]["scores"]) == {"world_oracle", "self_judge", "clip_score"}
        assert r["budget"]["critic_calls"] == 6


def test_ensemble_recipe_runs_as_shipped(tmp_path):
    """The recipe unchanged (smaller), once MiniMUG's and world_clip's shipped weights are installed."""
    from milr.critics.trained import shipped_checkpoints
    from milr.models.minimug.model import shipped_weights_dir
    from milr.runner import run_recipe

    if "world_clip" not in shipped_checkpoints() or not any(shipped_weights_dir().glob("*.safetensors")):
        pytest.skip("MiniMUG / world_clip shipped weights are not installed in this checkout")
    run_dir = run_recipe("ensemble-minimug", overrides=[
        "prompts.per_tag=1", "prompts.tags=[colors]", "search.n=6", "search.batch_size=6",
        f"run.output_dir={tmp_path}", "run.name=ens",
    ], progress=False, log=lambda s: None)
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert results and set(results[0]["final"]["scores"]) == {"world_oracle", "self_judge", "world_clip"}
