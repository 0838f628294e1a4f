"""The standard suites: every benchmark at the shapes worth comparing.

`python -m llm.bench all` measures training at the CPU preset and at the reference's CPU shape, and
the packer, tokenizer and engine at the CPU preset. `python -m llm.bench gpu` (bench/gpu.sh)
measures compiled bf16 training at d12 and d20 with each attention backend on one GPU.

Each benchmark runs in a fresh process, so none inherits another's compiled kernels, allocator
state or peak RSS, and one that fails (FA3 not loadable, out of memory) is reported with its error
while the rest still run. Extra overrides apply to every benchmark.
"""

import json
import subprocess
import sys
from typing import Iterator

CPU_PRESET = ["experiment=cpu"]
# The shape the reference trains on a CPU: depth 6, full-context 64-wide heads, 512 tokens, 32k vocabulary.
REFERENCE_CPU_SHAPE = ["model=d6", "model.head_dim=64", "model.window_pattern=L", "model.sequence_len=512",
                       "train.device_batch_size=32", "train.total_batch_size=16384", "data.vocab_size=32768"]
CPU_SUITE = {
    "train_cpu_preset": ("train", CPU_PRESET),
    "train_reference_cpu_shape": ("train", REFERENCE_CPU_SHAPE),
    "packer": ("packer", CPU_PRESET),
    "tokenizer": ("tokenizer", CPU_PRESET),
    "engine": ("engine", CPU_PRESET),
}
# The reference's GPU shapes: 2048-token rows, 32 per device, 524,288-token batches (accumulated).
GPU_TRAINING = ["device=cuda", "dtype=bfloat16", "train.compile=true", "train.device_batch_size=32",
                "train.total_batch_size=524288"]
GPU_SUITE = {
    f"train_d{depth}_{backend}": ("train", [f"model=d{depth}", f"attention={backend}", *GPU_TRAINING])
    for depth in (12, 20) for backend in ("fa3", "sdpa")
}
SUITES = {"all": CPU_SUITE, "gpu": GPU_SUITE}


def run_suite(suite: dict, overrides: list[str], steps: int, warmup: int) -> Iterator[tuple[str, dict]]:
    """(name, result) of each benchmark of `suite`, as each finishes; {"error": ...} for one that failed."""
    for name, (kind, preset) in suite.items():
        command = [sys.executable, "-m", "llm.bench", kind, *preset, *overrides,
                   "--steps", str(steps), "--warmup", str(warmup), "--json"]
        # stderr is kept for the error and also shown (progress, warnings); the JSON object is stdout's last line.
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(finished.stderr)
        if finished.returncode != 0:
            lines = finished.stderr.strip().splitlines() or [f"exit status {finished.returncode}"]
            yield name, {"error": lines[-1]}
            continue
        yield name, json.loads(finished.stdout.strip().splitlines()[-1])
