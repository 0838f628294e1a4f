"""Steady-state training throughput of a composed config, on random tokens.

The run is built as training builds it (`build_run`), with random tokens in place of its data:
they keep data loading out of the figure (the packer has its own benchmark); the step itself is
the training loop's own `train_step`. Warm-up steps are timed separately and excluded
from the steady-state numbers; the first of them is also reported alone, since it is the cold
one: with train.compile=true it is where compilation happens (fast when torch's compile cache
under the data home already holds this shape's kernels from an earlier run).

Peak RSS is the process's high-water mark, so it is only this benchmark's when it runs alone in
its process (as `python -m llm.bench all` runs each benchmark).
"""

import time
from pathlib import Path

import torch

from llm.config import compose_run
from llm.device import peak_flops, peak_memory_bytes, peak_rss_bytes
from llm.model import attention
from llm.train import build
from llm.train import runtime as runtimes
from llm.train.step import train_step


def random_batches(vocab_size: int, batch_size: int, sequence_len: int, device: torch.device, count: int = 4):
    """A few fixed random batches, cycled: enough to defeat caching, cheap to produce."""
    generator = torch.Generator().manual_seed(0)  # its own generator: the seeded one belongs to the weights
    rows = [torch.randint(0, vocab_size, (batch_size, sequence_len + 1), generator=generator) for _ in range(count)]
    while True:
        for row in rows:
            row = row.to(device)
            yield row[:, :-1], row[:, 1:]


def benchmark_train(overrides: list[str], steps: int, warmup: int, profile: str | None = None) -> dict:
    """Throughput after `warmup` steps; with `profile`, the timed steps also write torch.profiler's
    operator table (self time, the top 40) to that path."""
    if steps < 1 or warmup < 1:
        raise ValueError(f"steps and warmup must be at least 1 (the first step is the cold one), got {steps}, {warmup}")
    cfg = compose_run(overrides)
    runtime = runtimes.start(cfg.device, cfg.dtype, cfg.seed, cfg.base_dir)

    def random_loaders(cfg, tokenizer, corpus, runtime) -> build.Loaders:
        batches = random_batches(tokenizer.vocab_size, cfg.train.device_batch_size, cfg.model.sequence_len,
                                 runtime.device)
        return build.Loaders(train=batches, val=lambda: batches)

    built = build.build_run(cfg, runtime, loaders=random_loaders)
    plan, optimizer, batches = built.plan, built.optimizer, built.loaders.train
    step_model = torch.compile(built.model, dynamic=False) if cfg.train.compile else built.model

    def timed_steps(count: int) -> float:
        runtime.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            train_step(step_model, optimizer, batches, plan.grad_accum_steps, runtime)
        runtime.synchronize()
        return time.perf_counter() - start

    first_step_sec = timed_steps(1)
    warmup_sec = first_step_sec + timed_steps(warmup - 1)
    if profile:
        with torch.profiler.profile() as profiler:  # CPU activity, and the CUDA kernels where a GPU runs
            steady_sec = timed_steps(steps)
        table = profiler.key_averages().table(sort_by="self_device_time_total" if runtime.device.type == "cuda"
                                              else "self_cpu_time_total", row_limit=40)
        Path(profile).write_text(table + "\n")
    else:
        steady_sec = timed_steps(steps)
    peak, peak_source = peak_flops(runtime.device, runtime.compute_dtype)
    step_time = steady_sec / steps
    tokens_per_sec = plan.total_batch_size / step_time
    model_flops = plan.flops_per_token * tokens_per_sec
    result = {
        "tokens_per_sec": tokens_per_sec,
        "step_time_sec": step_time,
        "model_flops_per_sec": model_flops,
        "mfu": model_flops / (peak * runtime.world_size),
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
        "flops_per_token": plan.flops_per_token,
        "first_step_sec": first_step_sec,
        "warmup_sec": warmup_sec,
        "warmup_steps": warmup,
        "steps": steps,
        "device": runtime.describe(),
        "compile": bool(cfg.train.compile),
        "attention": attention.active_backend(),
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "peak_device_memory_mb": peak_memory_bytes(runtime.device) / 2**20,
        "depth": plan.shape.depth,
        "total_batch_size": plan.total_batch_size,
    }
    runtimes.stop(runtime)
    return result
