#!/usr/bin/env bash
# One device call: environment, GPU tests, compute-sanitizer, then a benchmark.
# Usage (repo root, on the GPU machine): benchmarks/gpu_check.sh [tests|sanitize|bench ARGS...]...
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
