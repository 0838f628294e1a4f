"""What the machine a process runs on can do: fast bf16, peak FLOP/s, peak memory.

These are properties of the hardware, so two launches of the same command on the same machine
always get the same answers, and asking never touches the seeded random number generator.

bf16 matmuls are fast on CUDA GPUs and on CPUs with bf16 matrix or dot-product units (Intel AMX,
AVX512-BF16, ARM's BF16 extension), which the kernel lists in /proc/cpuinfo. CPUs without them run
bf16 matmuls through a slow reference path, about 100x slower than fp32 on an AVX2-only machine.
"""

import functools
import math
import platform
import resource
import time
from pathlib import Path

import torch

from llm.analysis.hardware import peak_flops as published_peak_flops

# The CPU flags (x86 "flags", ARM "Features" in /proc/cpuinfo) under which oneDNN runs bf16 matmuls natively.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags the kernel reports for this machine's first CPU (empty where it reports none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def fast_bf16_matmul(device_type: str) -> bool:
    """Whether bf16 matmuls run on dedicated units on this kind of device (then dtype=auto picks bf16)."""
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True  # Apple M2 and later have BF16; macOS has no /proc/cpuinfo
    return bool(BF16_CPU_FLAGS & cpu_flags())


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """The best FLOP/s of a square matmul in `dtype` over about `seconds` (inputs from a private generator)."""
    generator = torch.Generator(device).manual_seed(0)
    a = torch.rand(size, size, device=device, generator=generator).to(dtype)
    b = torch.rand(size, size, device=device, generator=generator).to(dtype)
    a @ b  # the first call pays for kernel selection and allocation
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one device computing in `dtype`, where the figure comes from): what MFU divides by.

    GPUs have published bf16 peaks. A CPU's peak depends on its cores, vector units and matrix
    extensions (AMX runs bf16 about 3x faster than fp32), so it is measured in this process. Where
    bf16 matmuls are slow, the fp32 peak is the CPU's real one: a run that forced bf16 there uses a
    small share of the machine, and MFU says so.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = published_peak_flops(name)
        if math.isfinite(table):
            return table, f"published bf16 peak of {name}"
    if dtype == torch.bfloat16 and not fast_bf16_matmul(device.type):
        dtype = torch.float32
    return measured_matmul_flops(device, dtype), f"measured {str(dtype).removeprefix('torch.')} matmul on {device.type}"


def peak_rss_bytes() -> int:
    """This process's resident set size high-water mark."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process on `device`: allocated on a CUDA device, else the peak RSS."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
