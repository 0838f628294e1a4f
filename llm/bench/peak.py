"""The FLOP/s a device can actually deliver, which is what MFU should be measured against.

GPUs have published bf16 peaks (llm.analysis.hardware). A CPU's peak depends on its cores, vector
units and matrix extensions (AMX runs bf16 about 3x faster than fp32), so it is measured here with
a large square matmul in the run's dtype, in the same process as the benchmark it normalises.
Where bf16 matmuls are slow (no bf16 units: ~100x slower than fp32), the fp32 peak is the CPU's
real one: a run that chose bf16 there uses a small share of the machine, and MFU should say so.
"""

import math
import time

import torch

from llm.analysis.hardware import peak_flops
from llm.device import fast_bf16_matmul


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # first call pays for kernel selection and allocation
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = peak_flops(name)
        if math.isfinite(table):
            return table, f"published bf16 peak of {name}"
    if dtype == torch.bfloat16 and not fast_bf16_matmul(device.type):
        dtype = torch.float32
    return measured_matmul_flops(device, dtype), f"measured {str(dtype).removeprefix('torch.')} matmul on {device.type}"
