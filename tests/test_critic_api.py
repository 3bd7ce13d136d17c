"""The Python API of critics: milr.create_critic, score_images on tensors/PIL/paths/folders, as_loss,
TrainedCritic.from_pretrained, and distinct names for several trained critics in one recipe."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import milr
from milr.critics.trained import TrainedCritic, shipped_checkpoints
from milr.errors import UserError

pytestmark = pytest.mark.skipif("world_pref" not in shipped_checkpoints(), reason="shipped world_pref weights not built")
PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a cross above a diamond"]


def _pngs(folder, n=3, size=32, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _tensor(paths):
    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]).float() / 255


def test_create_critic_on_png_paths_equals_scoring_the_tensor(tmp_path):
    paths = _pngs(tmp_path / "imgs")
    critic = milr.create_critic("world_pref")
    expected = critic.score(_tensor(paths), PROMPTS, [{}] * 3)
    torch.testing.assert_close(critic.score_images(str(paths[0]), PROMPTS[0]), expected[:1])
    torch.testing.assert_close(critic.score_images(paths, PROMPTS), expected)
    torch.testing.assert_close(critic.score_images(tmp_path / "imgs", PROMPTS), expected)  # a folder, sorted by name
    torch.testing.assert_close(critic.score_images([Image.open(p) for p in paths], PROMPTS), expected)
    torch.testing.assert_close(critic.score_images(_tensor(paths)[1], PROMPTS[1]), expected[1:2])  # one [3, H, W] tensor
    with pytest.raises(UserError, match="3 images but 2 prompts"):
        critic.score_images(paths, PROMPTS[:2])


def test_create_critic_by_folder_and_from_pretrained_match_the_registry(tmp_path):
    folder = shipped_checkpoints()["world_pref"]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = milr.CRITICS.build("world_pref").score(x, PROMPTS)
    torch.testing.assert_close(milr.create_critic(str(folder), batch_size=2).score(x, PROMPTS), ref)
    torch.testing.assert_close(TrainedCritic.from_pretrained(folder).score(x, PROMPTS), ref)
    with pytest.raises(UserError, match="did you mean 'world_pref'"):
        milr.create_critic("world_prf")
    with pytest.raises(UserError, match="batch_sise.*did you mean 'batch_size'"):
        milr.create_critic("world_pref", batch_sise=2)


@pytest.mark.parametrize("name", ["world_pref", "world_clip"])
def test_as_loss_gradients_reach_the_image(name):
    if name not in shipped_checkpoints():
        pytest.skip(f"{name} weights not built")
    critic = milr.create_critic(name, as_loss=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    loss = -critic.score(x, PROMPTS[:2], [{}, {}]).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    # Without as_loss the score carries no graph (the runner's default).
    assert not milr.create_critic(name).score(x, PROMPTS[:2], [{}, {}]).requires_grad
    with pytest.raises(UserError, match="not differentiable"):
        milr.create_critic("world_oracle", as_loss=True)


def test_several_trained_critics_get_distinct_names_in_a_run(tmp_path):
    from milr.records import RunRecord
    from milr.runner import run_recipe

    src = shipped_checkpoints()["world_pref"]
    a, b = tmp_path / "pref-a", tmp_path / "pref-b"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    base = {"model": {"name": "toy_mug:ToyMUG"}, "search": {"name": "best_of_n", "n": 2},
            "prompts": {"inline": ["a photo of a circle"]}}
    run_dir = run_recipe({**base, "critics": [{"name": "trained", "path": str(a)}, {"name": "trained", "path": str(b)}],
                          "run": {"output_dir": str(tmp_path / "runs")}}, progress=False, log=lambda s: None)
    (res,) = RunRecord(run_dir).results()
    assert {"pref-a", "pref-b"} <= set(res["final"]["scores"])  # the folders' names, not trained / trained#1
    run_dir = run_recipe({**base, "critics": [{"name": "trained", "path": str(a), "as": "mine"}, {"name": "world_pref"}],
                          "run": {"output_dir": str(tmp_path / "runs2")}}, progress=False, log=lambda s: None)
    (res,) = RunRecord(run_dir).results()
    assert {"mine", "world_pref"} <= set(res["final"]["scores"])
    assert res["final"]["scores"]["mine"] == pytest.approx(res["final"]["scores"]["world_pref"])  # same weights


def test_loading_a_trained_critic_imports_no_training_code():
    import subprocess
    import sys

    code = ("import sys, torch, milr; c = milr.create_critic('world_pref'); c.score(torch.rand(1, 3, 32, 32), ['a']);"
            "bad = sorted(m for m in sys.modules if m.startswith(('milr.training', 'lightning')));"
            "print(bad); assert not bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
