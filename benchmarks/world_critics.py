"""Figures of the critics shipped for MiniMUG's world (rerunnable; seeded).

* **world CLIP** (``world_clip``, loaded by the ``clip_score`` critic from its open_clip folder):
  zero-shot classification of single rendered objects, the way GenEval classifies colours with
  CLIP (Ghosh et al. 2023, arXiv 2310.11513: the object's class is known, the colour is the argmax
  over "a photo of a {colour} {class}") and shapes by "a photo of a {shape}". Target >= 0.9 each.
* **preference model** (``world_pref``): pairwise accuracy on held-out world pairs -- TEST-split
  prompts (compositions no training prompt has), an image that follows the prompt versus a near
  miss; reported per category and per kind of miss. Target >= 0.85. The world CLIP's accuracy on
  the same pairs is printed beside it for comparison.

Usage (from the repository root)::

    python benchmarks/world_critics.py                      # the shipped critics
    python benchmarks/world_critics.py --pref runs/critics/world_pref --clip runs/critics/world_clip
    python benchmarks/world_critics.py --write-cards        # also record the figures in the cards
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def single_objects(n: int, seed: int) -> list[tuple[np.ndarray, str, str]]:
    """``n`` images of one object each (random shape, colour, size and place): (image, shape, colour)."""
    from milr import world

    rng = np.random.default_rng([seed, 11])
    out = []
    for _ in range(n):
        shape = world.SHAPES[int(rng.integers(len(world.SHAPES)))]
        color = list(world.COLORS)[int(rng.integers(len(world.COLORS)))]
        size = int(rng.integers(world.MIN_SIZE, world.MAX_SIZE + 1))
        x1, y1 = (int(v) for v in rng.integers(0, world.IMAGE_SIZE - size + 1, size=2))
        scene = world.Scene([world.make_obj(shape, color, x1, y1, size)])
        out.append((world.render(scene), shape, color))
    return out


def heldout_pairs(n: int, seed: int) -> list[dict]:
    """``n`` pairs on TEST-split prompts: (prompt, metadata, tag, kind, chosen, rejected)."""
    from milr import world
    from milr.world import suite
    from milr.world.data import applicable_kinds

    rng = np.random.default_rng([seed, 12])
    prompts = {t: suite.split_prompts(t, "test") for t in world.TAGS}
    kinds_cache: dict[str, list[str]] = {}
    out = []
    while len(out) < n:
        tag = world.TAGS[int(rng.integers(len(world.TAGS)))]
        md = prompts[tag][int(rng.integers(len(prompts[tag])))]
        kinds = applicable_kinds(md, kinds_cache)
        kind = kinds[int(rng.integers(len(kinds)))]
        good = world.sample_scene_for(md, rng)
        bad = world.sample_scene_violating(md, rng, kind=kind)
        out.append({"prompt": md["prompt"], "metadata": md, "tag": tag, "kind": kind,
                    "chosen": world.render(good), "rejected": world.render(bad)})
    return out


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)


@torch.no_grad()
def zero_shot(clip_critic, objects: list[tuple[np.ndarray, str, str]]) -> dict:
    """Colour (class known) and shape accuracy of a CLIP critic (a ``clip_score`` instance)."""
    from milr import world

    colors, shapes = list(world.COLORS), list(world.SHAPES)
    img = clip_critic.image_features(_tensor([o[0] for o in objects]))
    shape_txt = clip_critic.text_features([f"a photo of {'an' if s[0] in 'aeiou' else 'a'} {s}" for s in shapes])
    shape_pred = (img @ shape_txt.t()).argmax(1)
    color_hits, shape_hits = [], []
    per_color: dict[str, list[int]] = {c: [] for c in colors}
    per_shape: dict[str, list[int]] = {s: [] for s in shapes}
    for i, (_, s, c) in enumerate(objects):
        ct = clip_critic.text_features([f"a photo of {'an' if c2[0] in 'aeiou' else 'a'} {c2} {s}" for c2 in colors])
        hit_c = int(colors[int((img[i : i + 1] @ ct.t()).argmax())] == c)
        hit_s = int(shapes[int(shape_pred[i])] == s)
        color_hits.append(hit_c)
        shape_hits.append(hit_s)
        per_color[c].append(hit_c)
        per_shape[s].append(hit_s)
    return {
        "n_objects": len(objects),
        "color_accuracy": float(np.mean(color_hits)),
        "shape_accuracy": float(np.mean(shape_hits)),
        "color_accuracy_by_color": {c: float(np.mean(v)) for c, v in per_color.items() if v},
        "shape_accuracy_by_shape": {s: float(np.mean(v)) for s, v in per_shape.items() if v},
        "protocol": "single rendered objects (random shape, colour, size 8-12 px, place); colour: argmax over "
        "'a photo of a {colour} {shape}' with the shape known (GenEval's colour classifier protocol); shape: argmax "
        "over 'a photo of a {shape}'",
    }


@torch.no_grad()
def pairwise(critic, pairs: list[dict], batch: int = 256) -> dict:
    """Fraction of pairs where the critic scores the image that follows the prompt higher (ties: half)."""
    wins = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        prompts = [p["prompt"] for p in chunk]
        mds = [p["metadata"] for p in chunk]
        rc = critic.score(_tensor([p["chosen"] for p in chunk]), prompts, mds).float()
        rr = critic.score(_tensor([p["rejected"] for p in chunk]), prompts, mds).float()
        wins += ((rc > rr).float() + 0.5 * (rc == rr).float()).tolist()
    by = lambda key: {k: float(np.mean([w for w, p in zip(wins, pairs) if p[key] == k]))  # noqa: E731
                      for k in sorted({p[key] for p in pairs})}
    return {"n_pairs": len(pairs), "accuracy": float(np.mean(wins)), "by_tag": by("tag"), "by_kind": by("kind"),
            "protocol": "TEST-split world prompts (held-out compositions; single_object shares its texts with train); "
            "an image that follows the prompt vs a near miss of the given kind"}


def card_affine(folder: Path) -> dict:
    """Fixed z-score of a trained critic from its card's validation statistics (an ensemble ``affine`` spec)."""
    info = json.loads((folder / "critic.json").read_text())
    cal = info["card"]["extra"]["calibration"]
    stats = cal.get("all") or cal["matched_cosine"]
    std = max(float(stats["std"]), 1e-6)
    return {"type": "affine", "scale": 1.0 / std, "shift": -float(stats["mean"]) / std}


def ensemble_critics(pref_dir: Path, clip_dir: Path) -> tuple[list[dict], dict]:
    """The shipped world critics plus the self-judge, each put on a z-score scale, summed with equal weights."""
    critics = [{"name": "world_pref", "weight": 1.0}, {"name": "world_clip", "weight": 1.0}, {"name": "self_judge", "weight": 1.0}]
    combine = {"mode": "sum", "normalize": {"world_pref": card_affine(pref_dir), "world_clip": card_affine(clip_dir),
                                            "self_judge": {"type": "affine", "scale": 4.0, "shift": -2.0}}}
    return critics, combine


def milr_gain(pref_dir: Path, clip_dir: Path, per_tag: int, steps: int, seed: int, out_dir: str,
              model: Optional[dict] = None, which: tuple[str, ...] = ("ensemble", "oracle")) -> dict:
    """MILR on MiniMUG's TEST suite with the shipped ensemble (no exact scorer inside) and with the oracle.

    Both runs are scored by the exact scorer ``world_oracle`` (binary GenEval verdict) on the initial
    image (the base model's sample) and on the returned image.
    """
    from milr.records import RunRecord
    from milr.runner import run_recipe

    critics, combine = ensemble_critics(pref_dir, clip_dir)
    base = {"model": model or {"name": "minimug"}, "search": {"name": "reinforce", "mode": "both", "steps": steps},
            "prompts": {"suite": "minimug-world", "split": "test", "per_tag": per_tag},
            "evaluate": [{"name": "world_oracle", "mode": "binary"}],
            "run": {"seed": seed, "output_dir": out_dir}}
    out = {}
    setups = {"ensemble": {"critics": critics, "combine": combine}, "oracle": {"critics": [{"name": "world_oracle"}]}}
    for label in which:
        extra = setups[label]
        t0 = time.perf_counter()
        run_dir = run_recipe({**base, **extra, "run": {**base["run"], "name": f"world-critics-{label}"}}, progress=False,
                             log=lambda s: None)
        res = RunRecord(run_dir).records()
        init = [r.side("initial").eval["world_oracle"] for r in res]
        final = [r.side("final").eval["world_oracle"] for r in res]
        out[label] = {"prompts": len(res), "base": float(np.mean(init)), "milr": float(np.mean(final)),
                      "gain": float(np.mean(final) - np.mean(init)), "run_dir": str(run_dir),
                      "seconds": round(time.perf_counter() - t0, 1)}
    out["setting"] = {"per_tag": per_tag, "steps": steps, "seed": seed, "critics": critics, "combine": combine}
    return out


def write_figures(folder: Path, key: str, figures: dict) -> None:
    from milr.training.card import write_card_files

    info = json.loads((folder / "critic.json").read_text())
    info["card"]["extra"].setdefault("figures", {})[key] = figures
    write_card_files(folder, info)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pref", default="world_pref", help="preference critic folder or shipped name (default world_pref)")
    ap.add_argument("--clip", default="world_clip", help="world CLIP folder or shipped name (default world_clip)")
    ap.add_argument("--n-objects", type=int, default=700)
    ap.add_argument("--n-pairs", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-cards", action="store_true", help="record the figures in the critics' cards")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--milr", action="store_true", help="also run MILR on the world TEST suite with the shipped "
                    "ensemble (world_pref + world_clip + self_judge) and with the oracle, scored by world_oracle")
    ap.add_argument("--per-tag", type=int, default=2, help="--milr: prompts per category")
    ap.add_argument("--steps", type=int, default=20, help="--milr: MILR steps per prompt")
    ap.add_argument("--runs-dir", default="runs", help="--milr: where the two runs are written")
    ap.add_argument("--model", default=None, help="--milr: model spec as YAML (default {name: minimug})")
    ap.add_argument("--milr-critics", default="ensemble,oracle", help="--milr: which runs (ensemble, oracle)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    import milr.critics  # noqa: F401
    from milr.critics.clip_score import CLIPScore
    from milr.critics.trained import TrainedCritic, resolve_checkpoint
    from milr.registry import CRITICS

    t0 = time.perf_counter()
    clip_dir, pref_dir = resolve_checkpoint(args.clip), resolve_checkpoint(args.pref)
    clip = CLIPScore(arch=str(clip_dir))
    pref = TrainedCritic(str(pref_dir))
    objects = single_objects(args.n_objects, args.seed)
    pairs = heldout_pairs(args.n_pairs, args.seed)
    zs = zero_shot(clip, objects)
    pref_fig = pairwise(pref, pairs)
    clip_pairs = pairwise(clip, pairs)
    oracle = pairwise(CRITICS.build("world_oracle"), pairs)
    figures = {
        "world_clip": {"zero_shot": zs, "pairwise_on_heldout_pairs": {k: clip_pairs[k] for k in ("n_pairs", "accuracy", "by_tag", "by_kind")}},
        "world_pref": {"pairwise_on_heldout_pairs": pref_fig},
        "world_oracle": {"pairwise_on_heldout_pairs": {"accuracy": oracle["accuracy"]}},
        "seed": args.seed,
        "command": "python benchmarks/world_critics.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"world CLIP ({clip_dir}): zero-shot colour {zs['color_accuracy']:.3f}, shape {zs['shape_accuracy']:.3f} "
          f"on {zs['n_objects']} single objects (target >= 0.9)")
    print(f"  by colour: " + ", ".join(f"{k} {v:.2f}" for k, v in zs["color_accuracy_by_color"].items()))
    print(f"  by shape:  " + ", ".join(f"{k} {v:.2f}" for k, v in zs["shape_accuracy_by_shape"].items()))
    print(f"preference model ({pref_dir}): pairwise accuracy {pref_fig['accuracy']:.3f} on {pref_fig['n_pairs']} "
          f"held-out TEST-split pairs (target >= 0.85)")
    print(f"  by tag:  " + ", ".join(f"{k} {v:.2f}" for k, v in pref_fig["by_tag"].items()))
    print(f"  by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in pref_fig["by_kind"].items()))
    print(f"world CLIP on the same pairs: {clip_pairs['accuracy']:.3f}; exact scorer (world_oracle): {oracle['accuracy']:.3f}")
    print(f"  world CLIP by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in clip_pairs["by_kind"].items()))
    if args.milr:
        import yaml

        model = yaml.safe_load(args.model) if args.model else None
        which = tuple(x.strip() for x in args.milr_critics.split(",") if x.strip())
        g = milr_gain(pref_dir, clip_dir, args.per_tag, args.steps, args.seed, args.runs_dir, model, which)
        figures["milr_on_world_test"] = g
        for label in which:
            r = g[label]
            print(f"MILR with the {label} critic on {r['prompts']} TEST prompts: world_oracle accuracy base {r['base']:.3f} -> "
                  f"{r['milr']:.3f} (gain {r['gain']:+.3f}; {r['run_dir']})")
    if args.write_cards:
        write_figures(clip_dir, "benchmark", figures["world_clip"] | {"command": figures["command"], "seed": args.seed})
        write_figures(pref_dir, "benchmark", figures["world_pref"] | {"command": figures["command"], "seed": args.seed})
        print(f"figures written to {clip_dir}/critic.json and {pref_dir}/critic.json (and card.md)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
