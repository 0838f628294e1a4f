"""The standard suite behind `python -m llm.bench all`: every benchmark at the shapes worth comparing.

Each benchmark runs in a fresh process, so none inherits another's compiled kernels, allocator
state or peak RSS. Training is measured at the CPU preset and at the reference's CPU shape; the
packer, tokenizer and engine at the CPU preset. Extra overrides apply to every benchmark.
"""

import json
import subprocess
import sys
from typing import Iterator

CPU_PRESET = ["experiment=cpu"]
# The shape the reference trains on a CPU: depth 6, full-context 64-wide heads, 512 tokens, 32k vocabulary.
REFERENCE_CPU_SHAPE = ["model=d6", "model.head_dim=64", "model.window_pattern=L", "model.sequence_len=512",
                       "train.device_batch_size=32", "train.total_batch_size=16384", "data.vocab_size=32768"]
SUITE = {
    "train_cpu_preset": ("train", CPU_PRESET),
    "train_reference_cpu_shape": ("train", REFERENCE_CPU_SHAPE),
    "packer": ("packer", CPU_PRESET),
    "tokenizer": ("tokenizer", CPU_PRESET),
    "engine": ("engine", CPU_PRESET),
}


def run_suite(overrides: list[str], steps: int, warmup: int) -> Iterator[tuple[str, dict]]:
    """(name, result) of each benchmark in SUITE, as each finishes."""
    for name, (kind, preset) in SUITE.items():
        command = [sys.executable, "-m", "llm.bench", kind, *preset, *overrides,
                   "--steps", str(steps), "--warmup", str(warmup), "--json"]
        # stderr passes through (progress, warnings); the JSON object is stdout's last line.
        finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        yield name, json.loads(finished.stdout.strip().splitlines()[-1])
