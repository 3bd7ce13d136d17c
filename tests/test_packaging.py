"""Packaging: the wheel carries the mapped packages and data; plugins work by entry point only."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent


def test_wheel_contains_mapped_packages_and_data(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("milr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("milr/__init__.py", "milr/critics/__init__.py", "milr/search/__init__.py", "milr/models/__init__.py",
                 "milr/world/scenes.py", "milr/recipes/quickstart.yaml", "milr/data/geneval/evaluation_metadata.jsonl"):
        assert must in names, f"{must} missing from the wheel"
    assert not any(n.startswith(("critics/", "search/", "models/", "tests/")) for n in names)
    # the wheel imports on its own: unpack and import the mapped names from there
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import milr.critics, milr.search, milr.models, milr.recipe; print(milr.critics.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True)
    assert str(site) in out.stdout


PLUGIN = '''
import torch
from milr.cards import CriticCard
from milr.interfaces import Critic


class PluginCritic(Critic):
    card = CriticCard(summary="third-party plugin critic (darkness)", score_range=(0.0, 1.0))

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def score(self, images, prompts, metadata):
        return (1.0 - images.float().mean(dim=(1, 2, 3))) * self.gain
'''


def test_entry_point_plugin_usable_from_recipe(tmp_path):
    pkg = tmp_path / "plugin"
    (pkg / "milr_test_plugin").mkdir(parents=True)
    (pkg / "milr_test_plugin" / "__init__.py").write_text(PLUGIN)
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "milr-test-plugin"\nversion = "0.0.1"\n'
        '[project.entry-points."milr.critics"]\nplugin_darkness = "milr_test_plugin:PluginCritic"\n'
        '[tool.setuptools]\npackages = ["milr_test_plugin"]\n')
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(pkg)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(TESTS)])}
    listed = subprocess.run([sys.executable, "-m", "milr.cli", "list", "critics"], env=env, capture_output=True, text=True, check=True)
    assert "plugin_darkness" in listed.stdout and "third-party plugin critic" in listed.stdout
    recipe = {
        "model": {"name": "toy_mug:ToyMUG"},
        "critics": [{"name": "plugin_darkness", "gain": 2.0}],
        "search": {"name": "best_of_n", "n": 2},
        "prompts": {"inline": ["a plugin prompt"]},
        "run": {"output_dir": str(tmp_path / "runs")},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = subprocess.run([sys.executable, "-m", "milr.cli", "run", str(tmp_path / "r.yaml")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (results,) = (tmp_path / "runs").glob("*/results.jsonl")
    line = results.read_text().splitlines()[0]
    assert '"plugin_darkness"' in line
