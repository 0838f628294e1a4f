"""The standard suites: every benchmark at the shapes worth comparing.

`python -m llm.bench all` measures training at the CPU preset, d2 of the tiny_cpu preset the CPU
sweeps and the tests train (eager, then compiled twice: with an empty compile cache and again with
the cache the first compile filled), and at the reference's CPU shape, and the packer, tokenizer
and engine at the CPU preset. `python -m llm.bench gpu` (bench/gpu.sh)
measures compiled bf16 training at d12 and d20 with each attention backend on one GPU.

Each benchmark runs in a fresh process, so none inherits another's compiled kernels, allocator
state or peak RSS, and one that fails (FA3 not loadable, out of memory) is reported with its error
while the rest still run. Extra overrides apply to every benchmark.
"""

import json
import os
import subprocess
import sys
import tempfile
from typing import Iterator, NamedTuple


class Benchmark(NamedTuple):
    kind: str  # a `python -m llm.bench` command
    overrides: list[str]
    # Compile into a cache private to this suite run (empty at its start) instead of the data home's.
    private_compile_cache: bool = False


CPU_PRESET = ["preset=tiny_cpu", "model=d2", "device=cpu"]  # the shapes the CPU sweeps and the tests train
# The shape the reference trains on a CPU: depth 6, full-context 64-wide heads, 512 tokens, 32k vocabulary.
REFERENCE_CPU_SHAPE = ["model=d6", "model.head_dim=64", "model.window_pattern=L", "model.sequence_len=512",
                       "train.device_batch_size=32", "train.total_batch_size=16384", "data.vocab_size=32768"]
CPU_PRESET_COMPILED = Benchmark("train", [*CPU_PRESET, "train.compile=true"], private_compile_cache=True)
CPU_SUITE = {
    "train_cpu_preset": Benchmark("train", CPU_PRESET),
    "train_cpu_preset_compiled_cold": CPU_PRESET_COMPILED,
    "train_cpu_preset_compiled_warm": CPU_PRESET_COMPILED,  # the cache now holds the kernels
    "train_reference_cpu_shape": Benchmark("train", REFERENCE_CPU_SHAPE),
    "packer": Benchmark("packer", CPU_PRESET),
    "tokenizer": Benchmark("tokenizer", CPU_PRESET),
    "engine": Benchmark("engine", CPU_PRESET),
}
# The reference's GPU shapes: 2048-token rows, 32 per device, 524,288-token batches (accumulated).
GPU_TRAINING = ["device=cuda", "dtype=bfloat16", "train.compile=true", "train.device_batch_size=32",
                "train.total_batch_size=524288"]
GPU_SUITE = {
    f"train_d{depth}_{backend}": Benchmark("train", [f"model=d{depth}", f"attention={backend}", *GPU_TRAINING])
    for depth in (12, 20) for backend in ("fa3", "sdpa")
}
SUITES = {"all": CPU_SUITE, "gpu": GPU_SUITE}


def run_suite(suite: dict[str, Benchmark], overrides: list[str], steps: int, warmup: int
              ) -> Iterator[tuple[str, dict]]:
    """(name, result) of each benchmark of `suite`, as each finishes; {"error": ...} for one that failed."""
    with tempfile.TemporaryDirectory(prefix="llm-bench-compile-cache-") as private_cache:
        for name, benchmark in suite.items():
            command = [sys.executable, "-m", "llm.bench", benchmark.kind, *benchmark.overrides, *overrides,
                       "--steps", str(steps), "--warmup", str(warmup), "--json"]
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": private_cache} if benchmark.private_compile_cache else None
            # stderr is kept for the error and also shown (progress, warnings); stdout's last line is the JSON.
            finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            sys.stderr.write(finished.stderr)
            if finished.returncode != 0:
                lines = finished.stderr.strip().splitlines() or [f"exit status {finished.returncode}"]
                yield name, {"error": lines[-1]}
                continue
            yield name, json.loads(finished.stdout.strip().splitlines()[-1])
