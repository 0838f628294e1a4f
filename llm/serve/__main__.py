"""Serve a trained chat model over HTTP: a web UI at / and an OpenAI-compatible API.

    python -m llm.serve DIR [--host 127.0.0.1] [--port 8000] [--workers N] [--rows 32] [--device auto]

DIR is a run directory of any stage (its newest checkpoint is served) or a checkpoints/step_N
directory. On CUDA there is one replica per GPU (--workers caps how many); on a CPU --workers
replicas share the cores. Each replica decodes up to --rows requests together; more wait their turn.
CUDA computes under bf16 autocast; a CPU in float32, so that a greedy reply does not depend on
which other requests share its batch.
"""

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

from llm.cli import exit_on
from llm.config.derived import ConfigError
from llm.model import attention
from llm.serve.scheduler import Pool, Replica, Sampling
from llm.train import runtime as runtimes
from llm.train.checkpoint import CheckpointError
from llm.train.load import load_model


def replica_devices(device: torch.device, workers: int | None) -> list[torch.device]:
    if device.type == "cuda":
        count = torch.cuda.device_count() if workers is None else min(workers, torch.cuda.device_count())
        return [torch.device("cuda", index) for index in range(count)]
    return [device] * (workers or 1)


def build_pool(path: str, device: str, workers: int | None, rows: int) -> tuple[Pool, object, int]:
    """(pool of replicas, tokenizer, context length) for the run directory at `path`."""
    runtime = runtimes.start(device, "auto", seed=0)
    # On a CPU FA3 cannot load; asking for SDPA directly avoids a fallback warning.
    attention.set_backend("auto" if runtime.device.type == "cuda" else "sdpa")
    replicas, tokenizer, context = [], None, None
    for index, target in enumerate(replica_devices(runtime.device, workers)):
        model, tokenizer, _ = load_model(path, target)
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if target.type == "cuda" else nullcontext()
        replicas.append(Replica(f"{index}:{target}", model, tokenizer, precision, rows))
        context = model.config.sequence_len
    return Pool(replicas), tokenizer, context


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="run directory or checkpoints/step_N directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=None, help="model replicas (default: one per GPU, or 1)")
    parser.add_argument("--rows", type=int, default=32, help="requests one replica decodes together")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--temperature", type=float, default=0.8, help="default when a request sets none")
    parser.add_argument("--top-k", type=int, default=50, help="default when a request sets none")
    parser.add_argument("--max-tokens", type=int, default=512, help="default when a request sets none")
    args = parser.parse_args(argv)
    with exit_on(ConfigError, CheckpointError, FileNotFoundError, ValueError, prog="llm.serve"):
        if (args.workers is not None and args.workers < 1) or args.rows < 1:
            raise ValueError("--workers and --rows must be at least 1")
        if not 0 <= args.temperature <= 2 or not 1 <= args.top_k <= 200 or not 1 <= args.max_tokens <= 4096:
            raise ValueError("--temperature must be in [0, 2], --top-k in [1, 200], --max-tokens in [1, 4096]")
        pool, tokenizer, context = build_pool(args.path, args.device, args.workers, args.rows)
    import uvicorn

    from llm.serve.app import build_app
    defaults = Sampling(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=None, seed=0)
    app = build_app(pool, tokenizer, context, defaults, model_id=Path(args.path).resolve().name)
    print(f"serving {args.path} on http://{args.host}:{args.port} ({len(pool.replicas)} replica(s) x {args.rows} rows)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
