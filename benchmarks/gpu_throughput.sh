#!/usr/bin/env bash
# Janus-Pro-7B image-token throughput on one GPU, with random weights (no download), issue 12.
#
# Builds a randomly initialised Janus-Pro-7B-shaped model directly on the GPU in bf16
# (benchmarks/janus_random.py: the public config's shapes), prints the H200 roofline the docs use
# (projected), then MEASURES ms per image-token step and pixel-decoder ms per image at 1, 16 and 64
# prompts (x 2 CFG rows, one generator per prompt as the runner passes them) and projects the
# GenEval MILR-20 generator time (553 prompts x 4 images) from each measured step time.
# Needs: torch with CUDA, transformers >= 4.56, pytest importable (the offline tokenizer lives in
# tests/test_janus_pro.py), about 70 GB of GPU memory at 64 prompts. Status: NOT YET RUN ON A GPU
# (docs/janus-pro.md says so); its Python part is exercised on the CPU by --cpu-smoke in the tests.
#
#   bash benchmarks/gpu_throughput.sh                    # janus-pro-7b, cuda, batches 1,16,64
#   COMPILE=1 bash benchmarks/gpu_throughput.sh          # also torch.compile the decoding step
#   KV_CACHE=dynamic bash benchmarks/gpu_throughput.sh   # transformers' DynamicCache, for the ratio
#   bash benchmarks/gpu_throughput.sh --cpu-smoke        # tiny shape on the CPU (what the test runs)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

SHAPE="${SHAPE:-janus-pro-7b}"
DEVICE="${DEVICE:-cuda}"
BATCHES="${BATCHES:-1,16,64}"
REPEATS="${REPEATS:-1}"
KV_CACHE="${KV_CACHE:-static}"
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    SHAPE=tiny DEVICE=cpu BATCHES=1,2
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu_throughput.sh [--cpu-smoke]  (settings: SHAPE DEVICE BATCHES REPEATS KV_CACHE COMPILE)" >&2
    exit 2
fi
PY="${PYTHON:-python}"
if [[ "$DEVICE" == cuda* ]]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch; use --cpu-smoke or DEVICE=cpu')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
"$PY" benchmarks/janus_random.py roofline --shape "$SHAPE"
args=(throughput --shape "$SHAPE" --device "$DEVICE" --batches "$BATCHES" --repeats "$REPEATS" --kv-cache "$KV_CACHE")
[[ -n "${COMPILE:-}" ]] && args+=(--compile)
"$PY" benchmarks/janus_random.py "${args[@]}"
