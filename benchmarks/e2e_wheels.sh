#!/usr/bin/env bash
# Wheels for bench_e2e.py on the GPU machine, which has no network and no transformers
# (Python 3.12, x86_64, torch 2.11 + triton already installed). Run here, carry wheels/ there:
#
#   bash benchmarks/e2e_wheels.sh                                  # here: fills ./wheels (ignored by git)
#   pip install --no-index --find-links wheels transformers safetensors   # there
#
# transformers does not depend on torch, so nothing here can replace the GPU machine's torch.
# numpy is resolved here but not kept: the GPU environment has it (torch and leanattn need it) and
# it is the largest wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
        --platform any)
PKGS=("transformers==5.23.0" "safetensors>=0.8" "tqdm")
rm -rf wheels
mkdir -p wheels
"$PIP" download -q "${TARGET[@]}" -d wheels "${PKGS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
# the set must resolve offline for a fresh py3.12 target (dry run into a scratch dir)
scratch=$(mktemp -d)
# (pip checks Requires-Python against this interpreter, not the target: the flag lifts that only)
"$PIP" install -q --dry-run --ignore-installed --ignore-requires-python --no-index --find-links wheels "${TARGET[@]}" --target "$scratch" \
    "${PKGS[@]}"
rm -rf "$scratch"
rm -f wheels/numpy-*.whl
if ls wheels | grep -qi '^torch\|^nvidia\|^triton'; then echo "e2e_wheels: torch/triton/nvidia wheels pulled in" >&2; exit 1; fi
du -sh wheels
ls wheels | wc -l
