"""Agreement of MiniMUG's pixel scorer with the world's ground truth on rendered scenes.

For N prompts (all six GenEval tags in turn), renders a scene that satisfies the prompt or a
near miss that violates it (alternating), then compares:

* verdict agreement: ``score_image(render(scene), md).correct == truth(scene, md)``;
* detection accuracy: the detector's (class, colour, box, score) list equals the ground truth;

and reports the scorer's time per image. Usage::

    python benchmarks/scorer_agreement.py [--n 5000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from milr.geneval import evaluate
from milr.world import TAGS, gt_detections, render, sample_prompt, sample_scene_for, sample_scene_violating, truth
from milr.world.scorer import detect


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="number of rendered scenes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    per_tag = {t: [0, 0, 0] for t in TAGS}  # agree, detection exact, total
    n_true = 0
    seconds = 0.0
    for i in range(args.n):
        tag = TAGS[i % len(TAGS)]
        md = sample_prompt(rng, tag)
        scene = sample_scene_for(md, rng) if i % 2 == 0 else sample_scene_violating(md, rng)
        img = render(scene)
        t0 = time.perf_counter()
        dets = detect(img)
        verdict = evaluate(md, dets).correct
        seconds += time.perf_counter() - t0
        expected = truth(scene, md)
        n_true += expected
        stats = per_tag[tag]
        stats[0] += verdict == expected
        stats[1] += dets == gt_detections(scene)
        stats[2] += 1

    agree = sum(s[0] for s in per_tag.values())
    exact = sum(s[1] for s in per_tag.values())
    print(f"scenes: {args.n} ({n_true} satisfying, {args.n - n_true} violating), seed {args.seed}")
    print(f"verdict agreement: {agree}/{args.n} = {agree / args.n:.4%}")
    print(f"detections exact (class, colour, box, score): {exact}/{args.n} = {exact / args.n:.4%}")
    for tag, (a, e, n) in per_tag.items():
        print(f"  {tag:14s} agreement {a}/{n}  detections exact {e}/{n}")
    print(f"scorer time: {seconds / args.n * 1e3:.3f} ms per image (detect + GenEval rules, 1 thread)")
    return 0 if agree == exact == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
