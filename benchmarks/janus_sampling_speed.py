"""Image-token sampling speed and memory: the ``janus-pro`` adapter against transformers' ``generate()``.

Both sample the same CFG image tokens (weight 5, temperature 1, full distribution: ``top_k=0`` for
``generate()``) from the same tiny random Janus checkpoint (the test suite's config, saved to a
temporary folder). The script first checks that they produce identical tokens for the same seed,
then times them side by side, interleaved (one call of each method per round, so load from other
processes hits all methods alike), and reports the fastest round of each.

Columns:

* ``generate``: ``JanusForConditionalGeneration.generate(generation_mode="image")`` (prompt prefill
  plus the token loop, StaticCache).
* ``adapter``: ``image_context`` (prefill of both CFG rows) plus ``sample_image`` without hidden
  states -- the same work as ``generate``. ``ratio`` = generate / adapter (>= 1: adapter as fast).
* ``reuse``: ``sample_image`` alone, the prompt prefix encoded once and reused, as a search calls it
  every step (key/values in the adapter's preallocated buffer, its default); ``dynamic``: the same
  on transformers' ``DynamicCache``; ``+hidden`` also records the [R, N, 2, H] states MILR needs.

Memory: generate() and the adapter also run in their own subprocesses (load only what they need,
one warm-up call, one measured call); ``peak RSS`` is that process's ``ru_maxrss`` (weights,
libraries and all) and ``growth`` the largest rise of its RSS during the measured call (sampled
every 0.5 ms). With ``--device cuda``, ``torch.cuda.max_memory_allocated`` of the measured call.

    nice -n 15 python benchmarks/janus_sampling_speed.py                         # tiny: 4x4 = 16 tokens
    nice -n 15 python benchmarks/janus_sampling_speed.py --shape small-576       # 576 tokens, as Janus-Pro
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a blue dog", "a green cat", "a red dog"]  # equal token lengths: no padding
METHODS = ("generate", "adapter", "reuse", "dynamic", "hidden")


def build_checkpoint(folder: Path, shape: str) -> None:
    """A random Janus of a named shape (``benchmarks/janus_random.py``: ``tiny`` is the tests' model)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from janus_random import save_random_janus

    save_random_janus(shape, folder)


def make_methods(ckpt: str, device: str, batch: int, samples: int, only: tuple[str, ...] = METHODS) -> dict:
    """name -> zero-argument callable returning image tokens; loads only the models ``only`` needs."""
    import torch

    from milr.models.janus_pro import deepseek_sft_prompt

    prompts = PROMPTS[:batch]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            out = fn()
            sync()
            return out
        return run

    methods = {}
    if "generate" in only:
        from transformers import AutoTokenizer, JanusForConditionalGeneration

        ref = JanusForConditionalGeneration.from_pretrained(ckpt).to(device).eval()
        tok = AutoTokenizer.from_pretrained(ckpt)
        enc = tok([deepseek_sft_prompt(p) + tok.boi_token for p in prompts], return_tensors="pt", padding=True).to(device)
        gc = copy.deepcopy(ref.generation_config)
        gc.generation_kwargs = {"boi_token_id": tok.convert_tokens_to_ids(tok.boi_token)}
        gc.guidance_scale, gc.do_sample, gc.top_k, gc.num_return_sequences = 5.0, True, 0, samples
        methods["generate"] = timed(lambda: ref.generate(**enc, generation_config=gc, generation_mode="image"))
    if set(only) - {"generate"}:
        from milr.models.janus_pro import JanusPro

        janus = JanusPro(checkpoint=ckpt, device=device, dtype="float32")
        state = janus.encode_prompts(prompts)  # the reasoning-stage prefix: not part of image sampling
        ctx = janus.image_context(state)
        methods["adapter"] = timed(
            lambda: janus.sample_image(janus.image_context(state), num_samples=samples, return_hidden=False).tokens)
        methods["reuse"] = timed(lambda: janus.sample_image(ctx, num_samples=samples, return_hidden=False).tokens)

        def dynamic():  # the same call on transformers' DynamicCache (torch.cat every token)
            janus.kv_cache = "dynamic"
            try:
                return janus.sample_image(ctx, num_samples=samples, return_hidden=False).tokens
            finally:
                janus.kv_cache = "static"

        methods["dynamic"] = timed(dynamic)
        methods["hidden"] = timed(lambda: janus.sample_image(ctx, num_samples=samples, return_hidden=True).tokens)
    return {m: f for m, f in methods.items() if m in only}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_worker(args) -> dict:
    """Load everything, warm up, then one measured call of ``args.worker`` (run in a subprocess)."""
    import torch

    torch.set_num_threads(args.threads)
    import threading

    fn = make_methods(args.ckpt, args.device, args.batch, args.samples, only=(args.worker,))[args.worker]
    fn()
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    peak_call = [rss0]
    running = True

    def sample_rss():  # ru_maxrss covers the whole process; this sees the measured call alone
        while running:
            peak_call[0] = max(peak_call[0], _rss_mb())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    fn()
    running = False
    sampler.join()
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kB on Linux
            "growth_mb": max(0.0, max(peak_call[0], _rss_mb()) - rss0),
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny", help="a benchmarks/janus_random.py shape (tiny: 16 tokens; small-576)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default="1x1,2x4", help="comma list of PROMPTSxSAMPLES")
    ap.add_argument("--json", action="store_true", help="also print each shape's figures as a JSON line")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.worker:
        print(json.dumps(memory_worker(args)))
        return

    import torch

    torch.set_num_threads(args.threads)
    shapes = []
    for shape in args.shapes.split(","):
        b, n = (int(x) for x in shape.lower().split("x"))
        if not 1 <= b <= len(PROMPTS) or n < 1:
            raise SystemExit(f"--shapes: {shape!r}: prompts must be 1..{len(PROMPTS)} and samples >= 1")
        shapes.append((b, n))

    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp), args.shape)
        print(f"random Janus '{args.shape}', CFG 5, T 1, {args.device}, {args.threads} thread(s); "
              f"fastest of {args.rounds} interleaved rounds")
        header = (f"{'prompts x samples':>17} | {'generate ms':>11} | {'adapter ms':>10} | {'ratio':>5} | "
                  f"{'reuse ms':>8} | {'dynamic ms':>10} | {'+hidden ms':>10} | {'parity':>6} | "
                  "peak RSS MB gen / adapter (growth)")
        print(header)
        print("-" * len(header))
        for b, n in shapes:
            fns = make_methods(tmp, args.device, b, n)
            tokens = {}
            for m in METHODS:  # warm-up, and the parity sample: the same global seed for each
                torch.manual_seed(0)
                tokens[m] = fns[m]().cpu()
            parity = all(torch.equal(tokens[m], tokens["generate"]) for m in METHODS)
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for _ in range(args.rounds):
                for m in METHODS:
                    t0 = time.perf_counter()
                    fns[m]()
                    times[m].append(time.perf_counter() - t0)
            best = {m: min(v) * 1e3 for m, v in times.items()}
            mem = {}
            for m in ("generate", "adapter"):
                cmd = [sys.executable, __file__, "--worker", m, "--ckpt", tmp, "--batch", str(b), "--samples", str(n),
                       "--threads", str(args.threads), "--device", args.device]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    raise SystemExit(f"memory worker {m} failed:\n{proc.stderr[-3000:]}")
                mem[m] = json.loads(proc.stdout.strip().splitlines()[-1])
            g, a = mem["generate"], mem["adapter"]
            mem_s = f"{g['peak_rss_mb']:.0f} / {a['peak_rss_mb']:.0f} ({g['growth_mb']:.1f} / {a['growth_mb']:.1f})"
            if g["cuda_peak_mb"] is not None:
                mem_s += f"; CUDA peak {g['cuda_peak_mb']:.1f} / {a['cuda_peak_mb']:.1f}"
            print(f"{f'{b} x {n}':>17} | {best['generate']:11.1f} | {best['adapter']:10.1f} | "
                  f"{best['generate'] / best['adapter']:5.2f} | {best['reuse']:8.1f} | {best['dynamic']:10.1f} | "
                  f"{best['hidden']:10.1f} | "
                  f"{'yes' if parity else 'NO':>6} | {mem_s}")
            if args.json:
                med = {m: statistics.median(v) * 1e3 for m, v in times.items()}
                print(json.dumps({"shape": f"{b}x{n}", "best_ms": best, "median_ms": med, "parity": parity, "memory": mem}))
        print("ratio = generate / adapter (prefill included in both); >= 1 means the adapter is at least as fast.")


if __name__ == "__main__":
    main()
