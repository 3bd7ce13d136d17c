"""Randomly initialised Janus models of named shapes, built offline (no download), for speed figures.

A random model has a real model's cost per token (same matrices, same cache, same VQ decoder),
not its outputs; it is what the throughput benchmarks and ``gpu_throughput.sh`` time. The tokenizer
is the tests' word-level tokenizer with Janus's special tokens (``tests/test_janus_pro.py``, built
offline), so prompts are short and the ids fit any vocabulary.

Shapes:

* ``tiny``: the tests' model (Llama 64 hidden / 4 layers / vocab 512; 16 image tokens, 64 px).
* ``small-576``: the same transformer with Janus's 24 x 24 = 576 image tokens (384 px); CPU-fast.
* ``mid-576``: hidden 512, 8 layers, 576 image tokens (issue 12's mid-size model at Janus's grid).
* ``janus-pro-1b`` / ``janus-pro-7b``: the public checkpoints' shapes. 7B: Llama hidden 4096,
  intermediate 11008, 30 layers, 32 heads (32 key/value heads, head_dim 128), vocab 102400,
  max positions 16384 (deepseek-ai/Janus-Pro-7B ``config.json``: ``language_config``; the same
  values in its Llama-only extraction wnma3mz/Janus-Pro-7B-LM); understanding aligner 1024 -> 4096,
  generation aligner 8 -> 4096, generation head 4096 -> 16384 codes (``aligner_config``,
  ``gen_aligner_config``, ``gen_head_config``); SigLIP-L/16 at 384 px (hidden 1024, 24 layers,
  16 heads) and the VQ-16 decoder (codebook 16384 x 8, base channels 128, multipliers
  [1, 1, 2, 2, 4], 2 residual blocks, 256 latent channels) as transformers' ``JanusConfig``
  defaults describe them. 1B: Llama hidden 2048, intermediate 5632, 24 layers, 16 heads, vocab
  102400 (hf-internal-testing/tiny-processor-janus ``config.json``, the 1B layout in transformers'
  format), aligners and head at 2048.

    python benchmarks/janus_random.py --shape small-576            # build, print sizes, one image
    from janus_random import random_janus, save_random_janus       # (benchmarks/ on sys.path)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]

_TINY_VQ = dict(embed_dim=8, num_embeddings=256, base_channels=32, channel_multiplier=[1, 1, 2, 2, 4],
                num_res_blocks=1, latent_channels=32)
_REAL_VQ = dict(embed_dim=8, num_embeddings=16384, base_channels=128, channel_multiplier=[1, 1, 2, 2, 4],
                num_res_blocks=2, latent_channels=256)
_TINY_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
_SIGLIP_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)

#: name -> text (Llama) sizes, image grid (tokens per side; 16 px per token), vision tower, VQ model
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, intermediate=128, layers=4, heads=4, vocab=512, grid=4, vision=_TINY_VISION, vq=_TINY_VQ),
    "small-576": dict(hidden=64, intermediate=128, layers=4, heads=4, vocab=512, grid=24, vision=_TINY_VISION,
                      vq=_TINY_VQ),
    "mid-576": dict(hidden=512, intermediate=1376, layers=8, heads=8, vocab=512, grid=24, vision=_TINY_VISION,
                    vq=_TINY_VQ),
    "janus-pro-1b": dict(hidden=2048, intermediate=5632, layers=24, heads=16, vocab=102400, grid=24,
                         vision=_SIGLIP_L, vq=_REAL_VQ),
    "janus-pro-7b": dict(hidden=4096, intermediate=11008, layers=30, heads=32, vocab=102400, grid=24,
                         vision=_SIGLIP_L, vq=_REAL_VQ),
}


def _tests():
    """The tests' offline tokenizer and special-token ids (``tests/test_janus_pro.py``)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import test_janus_pro

    return test_janus_pro


def random_janus_config(shape: str) -> Any:
    """The ``transformers.JanusConfig`` of a named shape."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    from transformers import JanusConfig

    s, t = SHAPES[shape], _tests()
    grid, hidden = s["grid"], s["hidden"]
    return JanusConfig(
        text_config=dict(model_type="llama", hidden_size=hidden, intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                         vocab_size=s["vocab"], max_position_embeddings=16384 if s["vocab"] > 512 else 2048,
                         rms_norm_eps=1e-6, bos_token_id=t.BOS, eos_token_id=t.EOS, pad_token_id=t.PAD),
        vision_config=dict(**s["vision"], image_size=16 * grid, patch_size=16, projection_dim=hidden,
                           num_image_tokens=grid * grid),
        vq_config=dict(**s["vq"], projection_dim=hidden, image_token_embed_dim=hidden, num_patches=grid),
        image_token_id=t.IMG,
    )


def _processor(shape: str) -> Any:
    from transformers import JanusImageProcessor, JanusProcessor

    grid = SHAPES[shape]["grid"]
    px = 16 * grid
    return JanusProcessor(JanusImageProcessor(size={"height": px, "width": px}), _tests().build_tokenizer(),
                          num_image_tokens=grid * grid)


def _build(shape: str, seed: int, device: str = "cpu", dtype: Optional[Any] = None) -> Any:
    """The random model, created directly on ``device`` in ``dtype`` (7B: no fp32 copy on the host)."""
    import torch
    from transformers import JanusForConditionalGeneration

    config = random_janus_config(shape)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with torch.device(device):
            model = JanusForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    t = _tests()
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = t.BOS, t.EOS
    model.generation_config.pad_token_id = t.PAD
    return model


def save_random_janus(shape: str, folder: "str | Path", seed: int = 0) -> Path:
    """Write a checkpoint folder (config, safetensors, tokenizer, processor) of a named shape.

    Load it as a real checkpoint: ``JanusPro(checkpoint=folder)`` or, in a recipe,
    ``model: {name: janus-pro, checkpoint: <folder>}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _build(shape, seed).save_pretrained(folder)
    _processor(shape).save_pretrained(folder)
    return folder


def random_janus(shape: str, device: str = "cpu", dtype: Optional[str] = None, seed: int = 0, **janus_kwargs: Any):
    """A :class:`~milr.models.janus_pro.JanusPro` around a random model built in memory on ``device``.

    ``dtype``: as the adapter's (``None``: bf16 on CUDA, fp32 on the CPU); ``janus_kwargs``: the
    adapter's other arguments (``kv_cache``, ``compile``, ``max_text_tokens``, ...).
    """
    import torch

    from milr.devices import resolve_device, torch_dtype as _torch_dtype
    from milr.models.janus_pro import JanusPro

    dev = resolve_device(device, check=True)
    torch_dtype = _torch_dtype(dtype, torch.device(dev))
    model = _build(shape, seed, dev, torch_dtype)
    return JanusPro.from_modules(model, _processor(shape), source=f"random:{shape}", device=dev, dtype=dtype,
                                 **janus_kwargs)


def parameter_bytes(model: Any) -> dict[str, int]:
    """Bytes of the weights one image-token step reads (the language model without its token table,
    the generation head, aligner and embeddings), of the VQ decoder, and of all weights."""
    inner = model.model if hasattr(model, "model") and hasattr(model.model, "language_model") else model.model.model
    lm = inner.language_model
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    # The token embedding table is read one row per token, not whole.
    step = size(lm) - size(lm.embed_tokens) + size(inner.generation_head) + size(inner.generation_aligner)
    return {"step": step, "vq": size(inner.vqmodel), "total": size(model)}


# -- roofline and projection (docs/janus-pro.md) -----------------------------------------------------
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e bandwidth (NVIDIA H200 datasheet)
BF16_FLOPS = 989e12  # H200 (SXM) dense bf16 tensor-core peak (NVIDIA H200 datasheet)
GENEVAL_PROMPTS, GENEVAL_IMAGES = 553, 4  # GenEval: 553 prompts, 4 images each
MILR_STEPS = 20
FIRST_PASS = 0.80  # Janus-Pro-7B's GenEval overall score (Janus-Pro paper, GenEval table): images right at once
PROMPT_TOKENS = 100  # image prompt "{prompt}. {plan}" in the SFT template + BOI, a typical plan (~60 words)
PLAN_TOKENS = 80  # greedy plan length; re-decoded in the 25% of MILR steps whose text prefix changed
PLAN_REDECODE = 0.25  # issue 12: in 75% of MILR steps on MiniMUG the forced prefix did not change


def images_per_run(first_pass: float = FIRST_PASS, steps: int = MILR_STEPS) -> float:
    """Images one MILR-20 run decodes with early stopping, as an upper bound: the initial image, then
    ``steps`` more for every run that fails at first (as if none passed before the last step)."""
    return 1 + (1 - first_pass) * steps


def roofline(shape: str = "janus-pro-7b", prompt_tokens: int = PROMPT_TOKENS, batches=(1, 16, 64)) -> list[dict]:
    """Bytes, FLOPs and the bandwidth/compute floor of one image-token step at each batch (prompts x 2
    CFG rows), with the shape's sizes taken from a model built on the meta device (no memory)."""
    import torch
    from transformers import JanusForConditionalGeneration
    from transformers.models.janus.modeling_janus import JanusVQVAE
    from torch.utils.flop_counter import FlopCounterMode

    config = random_janus_config(shape)
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config).to(torch.bfloat16)
        vq = JanusVQVAE(config.vq_config)
        with FlopCounterMode(display=False) as fc:
            vq.decode(torch.zeros(1, config.vision_config.num_image_tokens, dtype=torch.long))
    sizes = parameter_bytes(model)
    t = config.text_config
    n = config.vision_config.num_image_tokens
    step_params = sizes["step"] / 2  # bf16
    kv_per_position = 2 * t.num_hidden_layers * t.num_key_value_heads * (t.hidden_size // t.num_attention_heads) * 2
    mean_len = prompt_tokens + n / 2  # positions attended, averaged over the image's steps
    rows_out = []
    for b in batches:
        rows = 2 * b
        kv = rows * mean_len * kv_per_position
        flops = 2 * step_params * rows + 4 * mean_len * t.hidden_size * t.num_hidden_layers * rows
        byte_ms = (sizes["step"] + kv) / HBM_BYTES_PER_S * 1e3
        flop_ms = flops / BF16_FLOPS * 1e3
        rows_out.append(dict(batch=b, rows=rows, image_tokens=n, mean_len=mean_len, weight_gb=sizes["step"] / 1e9, kv_gb=kv / 1e9, tflop=flops / 1e12,
                             byte_ms=byte_ms, flop_ms=flop_ms, step_ms=max(byte_ms, flop_ms),
                             vq_gflop=fc.get_total_flops() / 1e9, kv_mb_per_position=kv_per_position / 1e6))
    return rows_out


def project_geneval(step_ms: float, batch: int, image_tokens: int = 576, decode_ms: float = 0.0) -> dict:
    """Generator time of GenEval x 4 images with MILR-20 at ``batch`` prompts per step, from the ms of
    one image-token step (both CFG rows of every prompt); plan tokens are charged at the same step
    cost (an upper bound: a text step has half the rows), ``decode_ms`` per image for the pixels."""
    runs = GENEVAL_PROMPTS * GENEVAL_IMAGES
    images = runs * images_per_run()
    steps_per_image = image_tokens + PLAN_TOKENS * PLAN_REDECODE
    seconds = images * (steps_per_image * step_ms / batch + decode_ms) / 1e3 + runs * PLAN_TOKENS * step_ms / batch / 1e3
    return dict(runs=runs, images=images, steps_per_image=steps_per_image, seconds=seconds)


def print_roofline(shape: str) -> None:
    print(f"{shape} on an H200 (projected, not measured): bf16, {PROMPT_TOKENS}-token image prompt, "
          f"HBM {HBM_BYTES_PER_S / 1e12:.1f} TB/s, {BF16_FLOPS / 1e12:.0f} TFLOP/s dense bf16")
    rows = roofline(shape)
    r0 = rows[0]
    print(f"weights read per image-token step: {r0['weight_gb']:.2f} GB; KV per position per row "
          f"{r0['kv_mb_per_position']:.3f} MB; mean attended length {PROMPT_TOKENS} + {r0['image_tokens']} / 2 = "
          f"{r0['mean_len']:.0f}; "
          f"VQ pixel decoder {r0['vq_gflop']:.0f} GFLOP per image")
    print("| prompts (rows) | weights GB | KV GB | TFLOP | ms from bytes | ms from FLOPs | floor ms/step | "
          "GenEval MILR-20 |")
    for r in rows:
        p = project_geneval(r["step_ms"], r["batch"], r["image_tokens"], decode_ms=r["vq_gflop"] * 1e9 / BF16_FLOPS * 1e3)
        print(f"| {r['batch']} ({r['rows']}) | {r['weight_gb']:.2f} | {r['kv_gb']:.2f} | {r['tflop']:.3f} | "
              f"{r['byte_ms']:.2f} | {r['flop_ms']:.2f} | {r['step_ms']:.2f} | {p['seconds'] / 3600:.2f} h |")
    # DynamicCache's torch.cat reads and writes the whole cache at every token: 2 x KV bytes more.
    dyn = ", ".join(f"{r['batch']} prompts {(r['weight_gb'] + 3 * r['kv_gb']) * 1e9 / HBM_BYTES_PER_S * 1e3:.2f}"
                    for r in rows)
    print(f"with DynamicCache instead of the buffer (+ 2 x KV GB copied per step), floor ms/step: {dyn}")
    p = project_geneval(1.0, 1, r0["image_tokens"])
    print(f"GenEval MILR-20: {p['runs']} runs x {images_per_run():.1f} images (upper bound: 1 + (1 - {FIRST_PASS}) x "
          f"{MILR_STEPS}) = {p['images']:.0f} images; per image {p['steps_per_image']:.0f} steps "
          f"({r0['image_tokens']} image + {PLAN_TOKENS} x {PLAN_REDECODE} plan) + {PLAN_TOKENS} plan steps per run; "
          f"time = images x (steps x ms / prompts + pixel ms) + runs x {PLAN_TOKENS} x ms / prompts")


def throughput(janus: Any, batches: list[int], repeats: int = 1, plan_words: int = 60) -> list[dict]:
    """Time ``sample_image`` (no hidden states) and ``decode_image`` for each number of prompts, one
    generator per prompt as the runner passes them; a warm-up call first (allocation, compilation)."""
    import torch

    cuda = janus.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    plan = " ".join(f"w{i}" for i in range(plan_words))  # a plan of typical length, from the filler vocabulary
    out = []
    for b in batches:
        ctx = janus.image_context(janus.encode_prompts(["a photo of a red cube"] * b), [plan] * b)
        gens = lambda: [torch.Generator(device=janus.device).manual_seed(i) for i in range(b)]  # noqa: E731
        janus.sample_image(ctx, generator=gens(), return_hidden=False)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            img = janus.sample_image(ctx, generator=gens(), return_hidden=False)
        sync()
        sample_s = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        janus.decode_image(img.tokens)
        sync()
        decode_s = time.perf_counter() - t0
        out.append(dict(batch=b, rows=2 * b, prompt_tokens=ctx.prefix.length, step_ms=sample_s / janus.image_tokens * 1e3,
                        decode_ms=decode_s / b * 1e3, images_per_s=b / (sample_s + decode_s),
                        peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None))
    return out


def print_throughput(shape: str, device: str, batches: list[int], repeats: int, **janus_kwargs: Any) -> None:
    t0 = time.perf_counter()
    janus = random_janus(shape, device=device, **janus_kwargs)
    sizes = parameter_bytes(janus.model)
    print(f"{shape}: random weights built in {time.perf_counter() - t0:.1f} s on {janus.device} ({janus.dtype}, "
          f"kv_cache={janus.kv_cache}, compiled={janus.compiled}); weights "
          f"{sizes['total'] / 1e9:.2f} GB, {sizes['step'] / 1e9:.2f} GB read per image-token step (MEASURED below)")
    print("| prompts (CFG rows) | prompt tokens | ms per image-token step | pixel decode ms/image | images/s | "
          "peak GB | GenEval MILR-20 (projected from this step time) |")
    for r in throughput(janus, batches, repeats):
        p = project_geneval(r["step_ms"], r["batch"], janus.image_tokens, r["decode_ms"])
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        print(f"| {r['batch']} ({r['rows']}) | {r['prompt_tokens']} | {r['step_ms']:.2f} | {r['decode_ms']:.1f} | "
              f"{r['images_per_s']:.2f} | {peak} | {p['seconds'] / 3600:.2f} h |")
    print(f"projection: {GENEVAL_PROMPTS} prompts x {GENEVAL_IMAGES} images, MILR-{MILR_STEPS}, "
          f"{images_per_run():.1f} images per run (upper bound), generator only (no critic)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="build", choices=["build", "roofline", "throughput"],
                    help="build: one image; roofline: the H200 table (no model, no GPU); throughput: ms per step")
    ap.add_argument("--shape", default="small-576", choices=list(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batches", default="1,16,64", help="throughput: comma list of prompts per batch")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--kv-cache", default="static", choices=["static", "dynamic"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoding step")
    args = ap.parse_args()
    import torch

    if args.mode == "roofline":
        print_roofline(args.shape)
        return
    if args.mode == "throughput":
        batches = [int(x) for x in args.batches.split(",")]
        if not batches or min(batches) < 1:
            raise SystemExit(f"--batches: positive integers, got {args.batches!r}")
        print_throughput(args.shape, args.device, batches, args.repeats, dtype=args.dtype, kv_cache=args.kv_cache,
                         compile=args.compile)
        return
    t0 = time.perf_counter()
    janus = random_janus(args.shape, device=args.device, dtype=args.dtype)
    built = time.perf_counter() - t0
    sizes = parameter_bytes(janus.model)
    print(f"{args.shape}: built in {built:.1f} s on {janus.device} ({janus.dtype}); {janus.image_tokens} image tokens, "
          f"hidden {janus.hidden_size}; weights {sizes['total'] / 1e9:.3f} GB, read per image-token step "
          f"{sizes['step'] / 1e9:.3f} GB")
    ctx = janus.image_context(janus.encode_prompts(["a red cube"]))
    t0 = time.perf_counter()
    img = janus.sample_image(ctx, generator=torch.Generator().manual_seed(0), return_hidden=False)
    pixels = janus.decode_image(img.tokens)
    print(f"one image (CFG, {janus.image_tokens} tokens + pixel decoding): {time.perf_counter() - t0:.2f} s, "
          f"pixels {tuple(pixels.shape)}")


if __name__ == "__main__":
    main()
