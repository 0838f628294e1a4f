"""Inference throughput: prompt prefill, and decoding with and without the KV cache.

The model is either a trained run directory or a freshly initialised model of a composed config
(random weights decode just as fast; a tool call they happen to emit is refused as garbage). Three figures, each the best of `repeats` timed runs after
`warmup` untimed ones:

- prefill: one forward over a prompt into an empty cache (tokens/s of prompt);
- cached decode: the Engine generating greedily, one token per forward over the cache;
- uncached decode: a full forward over the whole sequence for every new token, which is what
  the cache saves; its cost grows with the sequence, so the gap widens with longer outputs.
"""

import time
from pathlib import Path

import torch

from llm.config import compose_run
from llm.inference.engine import Engine, greedy_uncached
from llm.model.kv_cache import KVCache
from llm.train import build
from llm.train import runtime as runtimes
from llm.train.load import load_model


def _load(target: str | Path | list[str], device: str):
    """(runtime, model, tokenizer, description) for a run directory or a list of Hydra overrides.

    A run directory runs on `device`; a composed config is built as training builds it, on its own
    device, precision and seed.
    """
    if isinstance(target, (str, Path)):
        runtime = runtimes.start(device, "auto", 0)
        model, tokenizer, _ = load_model(target, runtime.device)
        return runtime, model, tokenizer, str(target)
    cfg = compose_run(target)
    runtime = runtimes.start(cfg.device, cfg.dtype, cfg.seed, cfg.base_dir)
    built = build.build_run(cfg, runtime)
    built.model.eval()
    return runtime, built.model, built.tokenizer, " ".join(target) or "defaults"


def _best_time(run, repeats: int, warmup: int, runtime: runtimes.Runtime) -> float:
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeats):
        runtime.synchronize()
        start = time.perf_counter()
        run()
        runtime.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def benchmark_engine(target: str | Path | list[str], repeats: int = 3, warmup: int = 1,
                     prompt_tokens: int | None = None, new_tokens: int | None = None,
                     device: str = "auto") -> dict:
    """Prefill and decode tokens/s of a run directory (str/Path) or of the config these overrides compose.

    The prompt and the output default to half the model's context each, so both fit in it. `device`
    applies to a run directory; a composed config names its own.
    """
    runtime, model, tokenizer, source = _load(target, device)
    context = model.config.sequence_len
    prompt_tokens = prompt_tokens or context // 2
    new_tokens = new_tokens or context - prompt_tokens
    if prompt_tokens + new_tokens > context:
        raise ValueError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the context of "
                         f"{context}: lower one of them")
    generator = torch.Generator().manual_seed(0)
    # Ordinary tokens only, so no special token stops the cached decode early.
    prompt = torch.randint(0, tokenizer.bos_id, (prompt_tokens,), generator=generator).tolist()
    engine = Engine(model, tokenizer)
    produced = []

    @torch.inference_mode()
    def prefill():
        cache = KVCache.for_model(model, rows=1, capacity=prompt_tokens)
        model(torch.tensor([prompt], device=runtime.device), kv_cache=cache)

    def cached_decode():
        produced[:] = [column[0] for column, _ in engine.generate(prompt, max_tokens=new_tokens, temperature=0.0)]

    def uncached_decode():
        produced[:] = list(greedy_uncached(model, prompt, new_tokens))

    with runtime.autocast():
        prefill_sec = _best_time(prefill, repeats, warmup, runtime)
        cached_sec = _best_time(cached_decode, repeats, warmup, runtime)
        cached_count = len(produced)  # the engine stops early if the model emits a stop token
        uncached_sec = _best_time(uncached_decode, repeats, warmup, runtime)
    result = {
        "prefill_tokens_per_sec": prompt_tokens / prefill_sec,
        "decode_tokens_per_sec_cached": cached_count / cached_sec,
        "decode_tokens_per_sec_uncached": new_tokens / uncached_sec,
        "kv_cache_speedup": (cached_count / cached_sec) / (new_tokens / uncached_sec),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "cached_tokens_decoded": cached_count,
        "repeats": repeats,
        "warmup": warmup,
        "device": runtime.describe(),
        "model": source,
        "depth": model.config.depth,
        "sequence_len": context,
    }
    runtimes.stop(runtime)
    return result
