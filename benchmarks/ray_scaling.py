"""Ray executor scaling: 2 workers against 1 on a generate-heavy MiniMUG suite, side by side in one run.

    python benchmarks/ray_scaling.py                 # the 300 MiniMUG world test prompts x 2 images, search generate
    python benchmarks/ray_scaling.py --prompts 100 --workers 4 --gpus 1   # 4 GPU workers vs 1

One Ray cluster (``--workers`` CPUs, or GPUs with ``--gpus``) hosts both runs; each worker runs on
one thread (MiniMUG's tiny matrices run fastest so). Printed per run: wall seconds, the start-up
share (from the call until the first prompt began: the run folder, actors starting, the model and
critics loading; it must stay under a tenth for the ratio to mean scaling; the rest of the wall
time is solving, the last prompts' tail and the summary), and images per second; then the wall-time ratio (target >= 1.6x for 2 workers here) and whether both runs
wrote the same records. The cluster's own start (``ray.init``) is printed apart: it is paid once
per ``milr run``, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path


def recipe(prompts: int, workers: int, out: str, gpus: float, images: int = 1) -> dict:
    return {
        "model": {"name": "minimug"},
        "critics": [{"name": "world_oracle", "mode": "binary"}],
        "search": {"name": "generate"},
        "prompts": {"suite": "minimug-world", "split": "test", "limit": prompts,
                    "images_per_prompt": images},
        "run": {"seed": 0, "device": "cuda" if gpus else "cpu", "threads": 1, "output_dir": out, "name": f"ray-{workers}",
                "executor": "ray", "workers": workers, "cpus_per_worker": 1, "gpus_per_worker": gpus},
    }


def comparable(path: Path) -> list[dict]:
    """Result lines less timings and image paths, in prompt order."""
    def timeless(o):
        if isinstance(o, dict):
            return {k: timeless(v) for k, v in o.items() if k not in ("seconds", "images")}
        return [timeless(v) for v in o] if isinstance(o, list) else o

    lines = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
    return [timeless(r) for r in sorted(lines, key=lambda r: r["index"])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=300, help="MiniMUG world test prompts (at most 300)")
    ap.add_argument("--workers", type=int, default=2, help="the run compared with 1 worker")
    # Two images per prompt (600 runs): long enough that 2 workers' start-up stays under a tenth of the run here.
    ap.add_argument("--images-per-prompt", type=int, default=2, help="images (seeds) per prompt")
    ap.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker (0: CPU workers)")
    args = ap.parse_args()

    import ray

    from milr.runner import run_recipe

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, num_gpus=int(args.gpus * args.workers + 0.999), include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f} s (once per milr run)")
    rows, dirs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            out = Path(tmp) / f"w{workers}"
            seen: list[float] = []  # when the first and the last result line appeared
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    if any(p.stat().st_size for p in out.glob("*/results.jsonl")):
                        seen.append(time.perf_counter())
                        return
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            t = time.perf_counter()
            run_dir = run_recipe(recipe(args.prompts, workers, str(out), args.gpus, args.images_per_prompt), progress=False, log=lambda s: None)
            wall = time.perf_counter() - t
            stop.set()
            results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
            # Start-up: until the first prompt began (its line's time less its own seconds).
            startup = (seen[0] - t - results[0]["seconds"]) if seen else float("nan")
            rows.append((workers, wall, startup / wall, len(results) / wall))
            dirs[workers] = run_dir
            # Seconds a worker spent on one prompt: if it grows with the workers, the cores (shared with
            # other jobs) were the limit, not the executor.
            per_prompt = sum(r["seconds"] for r in results) / len(results)
            print(f"workers={workers}: wall {wall:.1f} s, start-up {startup:.1f} s ({rows[-1][2]:.1%}), "
                  f"{rows[-1][3]:.2f} images/s ({len(results)} prompts), {per_prompt:.3f} s per prompt in a worker",
                  flush=True)
        same = comparable(dirs[1]) == comparable(dirs[args.workers])
    ray.shutdown()
    ratio = rows[0][1] / rows[1][1]
    print(f"\n| workers | wall s | start-up share | images/s |\n|---|---|---|---|")
    for w, wall, share, ips in rows:
        print(f"| {w} | {wall:.1f} | {share:.1%} | {ips:.2f} |")
    print(f"\n{args.workers} workers vs 1: {ratio:.2f}x wall-time speed-up (target >= 1.6x for 2); "
          f"records identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
