"""``milr agree``: agreement figures computed by hand on a constructed run folder of flat-colour images.

Critics (tests/doubles.py): brightness = mean of r, g, b; redness = r - g. The reference is
redness, passing at >= 0.25. Initial images (r, g, b; multiples of 0.2 = 51/255 survive PNG
exactly): A (1.0, 0.2, 0.2) counting, B (0.2, 0.2, 0.2) counting, C (0.6, 0.8, 1.0) colors,
D (0.8, 0.4, 0.6) colors, so

    brightness  A 0.467  B 0.2  C 0.8   D 0.6
    redness     A 0.8    B 0.0  C -0.2  D 0.4   -> the reference passes A and D.
"""

import json

import pytest
import torch
import yaml

import doubles
from milr.agreement import AgreementError, agree, critic_agreement, fit_threshold, roc_auc
from milr.cli import main
from milr.records import RunRecord

COLOURS = {"A": (1.0, 0.2, 0.2), "B": (0.2, 0.2, 0.2), "C": (0.6, 0.8, 1.0), "D": (0.8, 0.4, 0.6)}
TAGS = {"A": "counting", "B": "counting", "C": "colors", "D": "colors"}
BRIGHT = "doubles:BrightnessCritic"
RED = "doubles:RednessCritic"
ANTI = "doubles:RednessCritic(scale=-1.0)"


def flat(rgb):
    return torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, 8, 8).clone()


def recipe_dict(model="doubles:CountingToyMUG", prompts=None):
    return {
        "model": {"name": model},
        "critics": [{"name": BRIGHT}, {"name": RED}],
        "search": {"name": "generate"},
        "prompts": {"inline": prompts or [{"prompt": f"thing {k}", "metadata": {"tag": t}} for k, t in TAGS.items()]},
        "run": {"seed": 0, "output_dir": "unused"},
    }


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the runner writes it: the finals are all image A (every final passes)."""
    rec = RunRecord.create(tmp_path, "made")
    rec.write_manifest(recipe_dict(), 0, "cpu")
    for i, (k, rgb) in enumerate(COLOURS.items()):
        rec.append({
            "index": i, "id": f"p{i}", "prompt": f"thing {k}", "metadata": {"tag": TAGS[k]},
            "initial": {"reward": 0.0}, "final": {"reward": 0.0},
            "images": {"initial": rec.save_image(flat(rgb), f"{i:05d}_initial.png"),
                       "final": rec.save_image(flat(COLOURS["A"]), f"{i:05d}_final.png")},
        })
    return rec.dir


def test_auc_by_hand():
    assert roc_auc([0.4, 0.2, 0.7, 0.6], [True, False, False, True]) == 0.5  # 2 of 4 pairs ordered
    assert roc_auc([1.0, 1.0, 2.0], [True, False, True]) == 0.75  # (tie 0.5 + win 1) / 2
    assert roc_auc([1.0, 2.0], [True, True]) is None


def test_fitted_threshold_by_hand():
    # t = 0.7: 1/4 agree; 0.6: 2/4; 0.4: 3/4; 0.2 (all pass): 2/4; none pass: 2/4
    assert fit_threshold([0.4, 0.2, 0.7, 0.6], [True, False, False, True]) == (0.4, 0.75)
    # two thresholds tie at 3/4 (0.8 and 0.35): the lowest is taken
    assert fit_threshold([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == (0.35, 0.75)


def test_critic_agreement_by_hand():
    res = critic_agreement([0.4, 0.2, 0.7, 0.6], [0.8, 0.0, -0.1, 0.5], ["counting", "counting", "colors", "colors"],
                           ref_threshold=0.25)
    o = res["overall"]
    assert res["threshold"] == 0.4 and res["threshold_fitted"] is True
    assert o["agreement"] == 0.75 and o["auc"] == 0.5
    # ranks 2,1,4,3 vs 4,2,1,3: sum d^2 = 14, rho = 1 - 6*14/(4*15); 2 concordant, 4 discordant pairs
    assert o["spearman"] == pytest.approx(-0.4) and o["kendall"] == pytest.approx(-1 / 3)
    assert res["by_tag"]["counting"] == {"n": 2, "reference_pass": 1, "critic_pass": 1, "agreement": 1.0,
                                         "spearman": pytest.approx(1.0), "kendall": pytest.approx(1.0), "auc": 1.0}
    assert res["by_tag"]["colors"]["auc"] == 0.0 and res["by_tag"]["colors"]["agreement"] == 0.5
    fixed = critic_agreement([0.4, 0.2, 0.7, 0.6], [0.8, 0.0, -0.1, 0.5], ["t"] * 4, 0.25, threshold=0.65)
    assert fixed["threshold_fitted"] is False and fixed["overall"]["agreement"] == 0.25  # only B agrees
    # a NaN score is left out, not counted as a fail: without B, C (0.7) outranks both passes
    nan = critic_agreement([0.4, float("nan"), 0.7, 0.6], [0.8, 0.0, -0.1, 0.5], ["t"] * 4, 0.25)
    assert nan["n_scored"] == 3 and nan["overall"]["n"] == 3 and nan["overall"]["auc"] == 0.0


def test_agree_on_run_folder(run_dir, tmp_path):
    out = agree(run_dir, tmp_path / "out", critics=f"[{{name: {RED}, scale: -1.0}}]", reference=RED,
                reference_threshold=0.25, thresholds=[f"{BRIGHT}=0.65"])
    report = json.loads((out / "agreement.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert (out / "agreement.png").is_file() and (out / "agreement.md").is_file()
    initial = report["sets"]["initial"]
    assert initial["n"] == 4 and initial["reference_pass"] == 2
    crit = initial["critics"]
    assert list(crit) == [BRIGHT, RED, "ensemble", ANTI]
    b = crit[BRIGHT]
    assert b["threshold"] == 0.65 and b["threshold_fitted"] is False
    assert b["overall"]["agreement"] == 0.25 and b["overall"]["auc"] == 0.5
    assert b["overall"]["spearman"] == pytest.approx(-0.4, abs=1e-6)
    # ensemble = brightness + redness: A 1.267, B 0.2, C 0.6, D 1.0 -> passing A, D outrank B, C
    e = crit["ensemble"]["overall"]
    assert e["auc"] == 1.0 and e["agreement"] == 1.0 and e["spearman"] == pytest.approx(0.8, abs=1e-6)
    assert crit[ANTI]["overall"]["auc"] == 0.0 and crit[ANTI]["overall"]["spearman"] == pytest.approx(-1.0)
    assert crit[RED]["by_tag"]["colors"]["auc"] == 1.0
    # finals: all image A, every one passes: no AUC, no rank correlation, full agreement when fitted
    final = report["sets"]["final"]
    assert final["reference_pass"] == 4
    assert final["critics"][RED]["overall"]["auc"] is None and final["critics"][RED]["overall"]["spearman"] is None
    assert final["critics"]["ensemble"]["overall"]["agreement"] == 1.0
    md = (out / "agreement.md").read_text()
    assert "## initial images (n=4, reference passes 2)" in md and "0.65 (fixed)" in md
    # the fitted threshold is D's score, 1.0: the lowest at which passing agrees on all four;
    # ranks 4,1,2,3 vs 4,2,1,3: only the pair (B, C) is discordant, tau = (5 - 1) / 6
    assert "| ensemble | 1 (fitted) | 1.000 | 0.800 | 0.667 | 1.000 |" in md


@pytest.mark.parametrize("kwargs, message", [
    ({"critics": "[{name: world_clp}]"}, "did you mean 'world_clip'"),
    ({"critics": "[{name: " + RED + ", bogus: 1}]"}, "bogus"),
    ({"critics": "{{{"}, "--critics: not valid YAML"),
    ({"critics": "[3]"}, "item 0 must be a critic name"),
    ({"thresholds": ["nobody=0.5"]}, "--threshold: unknown critics ['nobody']"),
    ({"thresholds": [f"{BRIGHT}=high"]}, "expected CRITIC=NUMBER"),
    ({"n": 0}, "--n: expected at least 1"),
])
def test_errors_before_anything_loads(run_dir, tmp_path, kwargs, message):
    before = doubles.CountingToyMUG.constructed
    with pytest.raises(AgreementError, match=None) as e:
        agree(run_dir, tmp_path / "out", **{"reference": RED, **kwargs})
    assert message in str(e.value)
    assert doubles.CountingToyMUG.constructed == before  # validated before the model loads


def test_reference_needed_outside_the_world(run_dir, tmp_path):
    with pytest.raises(AgreementError, match="give --reference"):
        agree(run_dir, tmp_path / "out")
    with pytest.raises(AgreementError, match="not a run folder"):
        agree(tmp_path, tmp_path / "out", reference=RED)


def test_cli_agree(run_dir, tmp_path, capsys):
    assert main(["agree", str(run_dir), "--out", str(tmp_path / "o"), "--reference", RED,
                 "--reference-threshold", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "## final images (n=4, reference passes 4)" in printed and printed.strip().endswith(str(tmp_path / "o"))
    assert main(["agree", str(run_dir), "--out", str(tmp_path / "o"), "--reference", RED, "--critics", "[{nam: x}]"]) == 2
    assert "milr: agree error: --critics: item 0" in capsys.readouterr().err


def test_agree_generates_images_from_a_recipe(tmp_path):
    prompts = [{"prompt": "a red thing", "metadata": {"tag": "counting"}}, {"prompt": "a blue thing", "metadata": {"tag": "colors"}}]
    data = recipe_dict(model="toy_mug:ToyMUG", prompts=prompts)
    data["search"] = {"name": "best_of_n", "n": 4}  # replaced by plain generation for the agreement set
    data["guard"] = {"critic": {"name": "doubles:RednessCritic", "scale": 2.0}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    out = agree(path, tmp_path / "out", reference=RED, reference_threshold=0.0, n=2, overrides=["run.seed=5"])
    report = json.loads((out / "agreement.json").read_text())
    assert list(report["sets"]) == ["generated"] and report["sets"]["generated"]["n"] == 4  # 2 prompts x 2 seeds
    runs = sorted((out / "generated").iterdir())
    assert len(runs) == 2
    seeds = []
    for run in runs:
        m = RunRecord(run).manifest()
        assert m["recipe"]["search"]["name"] == "generate" and "guard" not in m["recipe"]  # (+ its defaults, issue 14)
        seeds.append(m["seed"])
    assert sorted(seeds) == [5, 6]
    # the scores are those of the saved images: brightness re-scored equals the run's own record
    recorded = [r["initial"]["scores"][BRIGHT] for run in runs for r in RunRecord(run).results()]
    assert report["scores"]["generated"][BRIGHT] == pytest.approx(recorded, abs=1e-6)


class IncumbentCapped(doubles.BrightnessCritic):
    """Like an agreement gate: after a prompt's first image, nothing scores above that first score."""

    def __init__(self):
        super().__init__()
        self.first: dict[str, float] = {}

    def reset(self):
        self.first = {}

    def score(self, images, prompts, metadata):
        raw = super().score(images, prompts, metadata)
        out = []
        for p, r in zip(prompts, raw.tolist()):
            out.append(min(r, self.first.setdefault(p, r)))
        return torch.tensor(out)


def test_stateful_critic_scores_each_image_on_its_own():
    from milr.agreement import score_set

    images = torch.stack([flat((0.2, 0.2, 0.2)), flat((0.8, 0.8, 0.8)), flat((0.6, 0.6, 0.6))])
    prompts = ["same prompt"] * 3
    capped = IncumbentCapped()
    assert capped.score(images, prompts, [{}] * 3).tolist() == pytest.approx([0.2, 0.2, 0.2])  # the state at work
    capped.reset()
    assert score_set(capped, images, prompts, [{}] * 3) == pytest.approx([0.2, 0.8, 0.6])
