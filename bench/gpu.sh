#!/usr/bin/env bash
# GPU training throughput on one GPU: d12 and d20, bf16 autocast, torch.compile, with FA3 (loaded
# through `kernels`) and with PyTorch SDPA, at the reference's batch (32 x 2048-token rows, 524,288
# tokens per step). Prints a table per benchmark (tokens/s, MFU against the GPU's published bf16
# peak, step time, compile time, peak memory) and writes them all to one JSON file.
#
#   bash bench/gpu.sh [results.json]        (default: gpu_bench.json)
#
# Needs a CUDA build of torch and this package installed (pip install -e .). A backend that cannot
# load (FA3 off Hopper, or with no route to the kernels hub) is reported as an error in its place,
# and the script exits 1 after the others ran. About 5 minutes on one H100: four compiles, then
# 2 warm-up and 4 timed steps each.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m llm.bench gpu --steps 4 --warmup 2 --save "${1:-gpu_bench.json}"
