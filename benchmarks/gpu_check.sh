#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a bare, offline GPU machine, from the repository root, with .whl/
# carried along (made online by `python benchmarks/gpu_check.py --prepare-wheels .whl`: TRL, datasets, Hydra,
# bitsandbytes for CUDA 13 and what they need that the machine lacks; none shadows its torch or transformers).
# Results go to $OUT (the device tool's folder) or outputs/gpu_check; extra arguments go to the script.
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
python3 benchmarks/gpu_check.py --out "${OUT:-outputs/gpu_check}" "$@"
