"""MiniMUG quality: GenEval-style generation scores, understanding accuracy, tokenizer round trip.

The rerunnable measurement behind the figures in ``models/minimug/weights/MODEL_CARD.md``.
GenEval (Ghosh et al. 2023, arXiv 2310.11513) scores each image correct/incorrect; a category's
score is the mean over its images and the overall score the mean over categories. Here the
detector is the world's exact scorer (:mod:`milr.world.scorer`) and the prompts are the
``minimug-world`` suite (default: TEST split, 50 prompts per category, 4 images per prompt, fixed
seeds). Generation runs as the model's plain pipeline: greedy plan, then CFG sampling.

    python benchmarks/minimug_quality.py                      # shipped weights, test split
    python benchmarks/minimug_quality.py --split train --cfg 1 1.5 2 3   # choose a default
    python benchmarks/minimug_quality.py --weights checkpoints/minimug/weights --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional

import numpy as np
import torch

from milr import world
from milr.world import scorer, suite
from milr.models.minimug.model import MiniMUG


def generation_scores(
    model: MiniMUG,
    items: list[dict],
    samples: int,
    cfg: float,
    temperature: float,
    reasoning: bool = True,
    batch_prompts: int = 50,
) -> dict:
    """Per-tag accuracy over images, overall (mean of tags), best-of-``samples`` per tag."""
    per_tag: dict[str, list[bool]] = {}
    best: dict[str, list[bool]] = {}
    plans_ok: dict[str, list[bool]] = {}
    for start in range(0, len(items), batch_prompts):
        chunk = items[start: start + batch_prompts]
        gen = torch.Generator().manual_seed(int(chunk[0]["seed"]))
        state = model.encode_prompts([it["prompt"] for it in chunk])
        text = model.reason(state) if reasoning else None
        ctx = model.image_context(state, text.texts if text else None)
        res = model.sample_image(ctx, num_samples=samples, cfg=cfg, temperature=temperature, generator=gen,
                                 return_hidden=False)
        px = model.decode_image(res.tokens)
        for i, it in enumerate(chunk):
            tag = it["metadata"]["tag"]
            ok = [scorer.score_image(px[i * samples + j], it["metadata"]).correct for j in range(samples)]
            per_tag.setdefault(tag, []).extend(ok)
            best.setdefault(tag, []).append(any(ok))
            if text is not None:
                plans_ok.setdefault(tag, []).append(_plan_satisfies(text.texts[i], it["metadata"]))
    tags = [t for t in world.TAGS if t in per_tag]
    out = {t: float(np.mean(per_tag[t])) for t in tags}
    out["overall"] = float(np.mean([out[t] for t in tags]))
    out["best_of_n"] = {t: float(np.mean(best[t])) for t in tags}
    out["best_of_n"]["overall"] = float(np.mean([out["best_of_n"][t] for t in tags]))
    if plans_ok:
        out["plan_correct"] = {t: float(np.mean(plans_ok[t])) for t in tags}
    return out


def _plan_satisfies(plan: str, metadata: dict) -> Optional[bool]:
    """Does a plan, read as a scene (objects at their grid-cell centres), satisfy the prompt?

    Only a diagnostic: grid cells are coarse, so a relation between two objects in the same cell
    counts as unsatisfied.
    """
    objs = []
    for part in plan.split(";"):
        w = part.split()
        if len(w) != 4 or w[0] not in world.COLORS or w[1] not in world.SHAPES:
            return False
        col, row = w[2], w[3]
        if col not in world.COLUMN_WORDS or row not in world.ROW_WORDS:
            return False
        cx = (world.COLUMN_WORDS.index(col) + 0.5) * world.IMAGE_SIZE / 3
        cy = (world.ROW_WORDS.index(row) + 0.5) * world.IMAGE_SIZE / 3
        objs.append(world.Obj(w[1], w[0], cx, cy, 8))
    try:
        return world.truth(world.Scene(objs), metadata)
    except Exception:
        return False


def understanding_accuracy(model: MiniMUG, n: int, seed: int, split: str) -> dict:
    """Accuracy of ``yes_probability > 0.5`` on rendered images, by question kind.

    Scenes: half satisfy a suite prompt, half are near-misses; one balanced random question and one
    of the prompt's own decomposed questions per image (what the self-judging critic asks).
    """
    rng = np.random.default_rng([seed, 7])
    items = suite.world_suite(split)
    imgs, qs, ans = [], [], []
    for i in range(n):
        md = items[int(rng.integers(len(items)))]["metadata"]
        scene = world.sample_scene_for(md, rng) if i % 2 == 0 else world.sample_scene_violating(md, rng)
        img = world.render(scene)
        q, a = world.sample_question(scene, rng)
        own = world.questions_for(md)
        q2 = own[int(rng.integers(len(own)))]
        for qq, aa in ((q, a), (q2, world.answer(scene, q2))):
            imgs.append(img)
            qs.append(qq)
            ans.append(aa)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    p = torch.cat([model.yes_probability(x[s: s + 256], qs[s: s + 256]) for s in range(0, len(qs), 256)])
    right = ((p > 0.5) == torch.tensor(ans)).numpy()
    kinds = [world.question_kind(q) for q in qs]
    out = {"accuracy": float(right.mean()), "questions": len(qs), "yes_fraction": float(np.mean(ans))}
    for k in world.QUESTION_KINDS:
        sel = [i for i, kk in enumerate(kinds) if kk == k]
        if sel:
            out[k] = float(right[sel].mean())
    return out


def judge_on_generated(model: MiniMUG, items: list[dict], samples: int) -> dict:
    """The model judging its OWN images, as the ``self_judge`` critic does, against the exact scorer.

    For each generated image the prompt's decomposed questions are asked; a question's truth is the
    exact scorer's GenEval verdict on the question's metadata for that image. Image level: the
    judge passes an image when every answer is yes (p > 0.5), compared with the scorer's verdict.
    """
    right, kinds, agree, judged_pass, true_pass = [], [], [], [], []
    for start in range(0, len(items), 50):
        chunk = items[start: start + 50]
        px = model.generate([it["prompt"] for it in chunk], num_samples=samples,
                            generator=torch.Generator().manual_seed(int(chunk[0]["seed"])))[2]
        imgs, qs, truth, owner = [], [], [], []
        for i, it in enumerate(chunk):
            for j in range(samples):
                img = px[i * samples + j]
                for q in world.questions_for(it["metadata"]):
                    imgs.append(img)
                    qs.append(q)
                    truth.append(scorer.score_image(img, world.question_metadata(q)).correct)
                    owner.append(i * samples + j)
        p = torch.cat([model.yes_probability(torch.stack(imgs[s: s + 256]), qs[s: s + 256]) for s in range(0, len(qs), 256)])
        yes = (p > 0.5).tolist()
        right += [y == t for y, t in zip(yes, truth)]
        kinds += [world.question_kind(q) for q in qs]
        for k in sorted(set(owner)):
            idx = [n for n, o in enumerate(owner) if o == k]
            jp, tp = all(yes[n] for n in idx), all(truth[n] for n in idx)
            judged_pass.append(jp)
            true_pass.append(tp)
            agree.append(jp == tp)
    out = {"question_accuracy": float(np.mean(right)), "questions": len(right), "images": len(agree),
           "image_agreement": float(np.mean(agree)), "judged_pass_rate": float(np.mean(judged_pass)),
           "true_pass_rate": float(np.mean(true_pass))}
    tp = np.array(true_pass)
    jp = np.array(judged_pass)
    # Of the images the judge passes, how many really pass: what a search that trusts it gets.
    out["precision_of_pass"] = float(tp[jp].mean()) if jp.any() else float("nan")
    for k in world.QUESTION_KINDS:
        sel = [r for r, kk in zip(right, kinds) if kk == k]
        if sel:
            out[k] = float(np.mean(sel))
    return out


def tokenizer_agreement(model: MiniMUG, n: int, seed: int, split: str) -> dict:
    """Share of rendered images whose exact-scorer verdict survives encode -> decode."""
    rng = np.random.default_rng([seed, 8])
    items = suite.world_suite(split)
    keep, exact = [], []
    for i in range(n):
        md = items[int(rng.integers(len(items)))]["metadata"]
        scene = world.sample_scene_for(md, rng) if i % 2 == 0 else world.sample_scene_violating(md, rng)
        img = world.render(scene)
        rt = model.tokenizer.round_trip(img[None])[0]
        keep.append(scorer.score_image(img, md).correct == scorer.score_image(rt, md).correct)
        exact.append(bool((rt == img).all()))
    return {"verdict_kept": float(np.mean(keep)), "pixel_exact": float(np.mean(exact)), "images": n}


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="weights folder or .safetensors (default: shipped)")
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--n-per-tag", type=int, default=50, help="prompts per category for generation (0: skip)")
    ap.add_argument("--samples", type=int, default=4, help="images per prompt")
    ap.add_argument("--cfg", type=float, nargs="+", default=None, help="CFG weight(s); default: the model's")
    ap.add_argument("--temperature", type=float, nargs="+", default=None, help="temperature(s); default: the model's")
    ap.add_argument("--no-reasoning", action="store_true", help="generate without the plan")
    ap.add_argument("--understanding", type=int, default=500, help="rendered images for understanding (0: skip)")
    ap.add_argument("--judge-per-tag", type=int, default=20,
                    help="prompts per category whose generated images the model judges itself (0: skip)")
    ap.add_argument("--tokenizer-images", type=int, default=1000, help="rendered images for the round trip (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    model = MiniMUG(weights=a.weights)
    items = suite.world_suite(a.split, n_per_tag=a.n_per_tag)
    cfgs = a.cfg or [model.default_cfg]
    temps = a.temperature or [model.default_temperature]
    results: dict = {"split": a.split, "n_per_tag": a.n_per_tag, "samples": a.samples, "reasoning": not a.no_reasoning,
                     "generation": []}
    tags = world.TAGS
    print(f"MiniMUG quality on the {a.split} split: {a.n_per_tag} prompts x {a.samples} images per category, exact scorer")
    head = f"{'cfg':>5} {'temp':>5} " + " ".join(f"{t[:12]:>12}" for t in tags) + f" {'overall':>8} {'best-of-n':>9} {'sec':>5}"
    print(head)
    for w in cfgs if a.n_per_tag else []:
        for temp in temps:
            t0 = time.perf_counter()
            g = generation_scores(model, items, a.samples, w, temp, reasoning=not a.no_reasoning)
            g.update({"cfg": w, "temperature": temp, "seconds": round(time.perf_counter() - t0, 1)})
            results["generation"].append(g)
            print(f"{w:>5g} {temp:>5g} " + " ".join(f"{g[t]:>12.3f}" for t in tags)
                  + f" {g['overall']:>8.3f} {g['best_of_n']['overall']:>9.3f} {g['seconds']:>5.0f}", flush=True)
    if results["generation"] and "plan_correct" in results["generation"][0]:
        pc = results["generation"][0]["plan_correct"]
        print("plan satisfies prompt (grid reading): " + " ".join(f"{t}={pc[t]:.2f}" for t in tags if t in pc))
    if a.understanding:
        u = understanding_accuracy(model, a.understanding, a.seed, a.split)
        results["understanding"] = u
        print(f"understanding accuracy {u['accuracy']:.3f} on {u['questions']} questions about rendered images "
              f"(yes {u['yes_fraction']:.2f}); " + " ".join(f"{k}={u[k]:.3f}" for k in world.QUESTION_KINDS if k in u))
    if a.judge_per_tag:
        jitems = suite.world_suite(a.split, n_per_tag=a.judge_per_tag)
        jg = judge_on_generated(model, jitems, 2)
        results["self_judge_on_generated"] = jg
        print(f"self-judging its own images ({jg['images']} generated, default sampling): question accuracy "
              f"{jg['question_accuracy']:.3f} on {jg['questions']} questions ("
              + " ".join(f"{k}={jg[k]:.3f}" for k in world.QUESTION_KINDS if k in jg)
              + f"); image verdict agreement {jg['image_agreement']:.3f}; judged pass {jg['judged_pass_rate']:.3f}"
              f" vs true pass {jg['true_pass_rate']:.3f}; precision of a pass {jg['precision_of_pass']:.3f}")
    if a.tokenizer_images:
        tk = tokenizer_agreement(model, a.tokenizer_images, a.seed, a.split)
        results["tokenizer"] = tk
        print(f"tokenizer round trip: verdict kept on {tk['verdict_kept']:.4f} of {tk['images']} rendered images "
              f"(pixel-exact {tk['pixel_exact']:.3f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
