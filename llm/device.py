"""What the hardware this process runs on is good at, measured rather than guessed.

bf16 matmuls are fast on GPUs and on CPUs with bf16 matrix units (Intel AMX, AVX512-BF16, recent
ARM). CPUs without them run bf16 matmuls through a slow reference path, about 100x slower than
fp32 on an AVX2-only machine. CPU flags do not reliably say which path torch will take, so the
question is answered by timing both dtypes once per process.
"""

import functools
import time

import torch


def _best_time(a: torch.Tensor, repeats: int = 3) -> float:
    a @ a  # the first call pays for kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def fast_bf16_matmul(device_type: str) -> bool:
    """Whether a bf16 matmul beats an fp32 one on this kind of device."""
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    probe = torch.randn(256, 256)
    return _best_time(probe.bfloat16()) < _best_time(probe)
