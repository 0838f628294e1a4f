"""Serving throughput: a real `python -m llm.serve` process on loopback, driven by concurrent streams.

At each concurrency (1, 8 and 32 streams at once) every stream asks the reference's streaming route
for a greedy reply of up to `max_tokens`, with a prompt of its own. Reported per concurrency: the
aggregate tokens/s (every stream's tokens over the wall time of the round) and the median and 95th
percentile time to first token. The ratio of 32 streams to one is what batching the decode steps
buys; one replica serves them all, so the ratio is the scheduler's, not extra hardware's.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

CONCURRENCY = (1, 8, 32)


@contextmanager
def running_server(run: str | Path, *flags: str, device: str = "auto"):
    """The address of `python -m llm.serve run` started on a free loopback port, stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "llm.serve", str(run), "--port", str(port), "--device", device,
                                *flags], env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stdout.read()}")
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not answer /health within 300 s")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def timed_stream(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the end, tokens generated) of one greedy stream."""
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": max_tokens}
    start, first = time.perf_counter(), None
    with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if "token" in event and first is None:
                first = time.perf_counter() - start
            if event.get("done"):
                return first or 0.0, time.perf_counter() - start, event["usage"]["completion_tokens"]
    raise RuntimeError(f"a stream ended without its done event (status {response.status_code})")


def round_of(url: str, streams: int, max_tokens: int) -> dict:
    results: list[tuple[float, float, int]] = []
    # One client with a connection per stream: a client of its own costs each stream more than its request.
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=streams))
    threads = [threading.Thread(target=lambda i=i: results.append(
        timed_stream(client, url, f"request {i}: please write a long answer about topic {i}", max_tokens)))
        for i in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    client.close()
    if len(results) != streams:
        raise RuntimeError(f"{streams - len(results)} of {streams} streams failed")
    firsts = sorted(first for first, _, _ in results)
    tokens = sum(count for _, _, count in results)
    return {"tokens_per_sec": tokens / wall, "tokens": tokens,
            "ttft_p50_ms": 1000 * statistics.median(firsts),
            "ttft_p95_ms": 1000 * firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))]}


def benchmark_serve(run: str | Path, max_tokens: int = 64, device: str = "auto") -> dict:
    with running_server(run, "--rows", str(max(CONCURRENCY)), device=device) as url:
        round_of(url, 2, 8)  # warm-up: first allocations, first kernels
        rounds = {streams: round_of(url, streams, max_tokens) for streams in CONCURRENCY}
    result = {"run": str(run), "max_tokens": max_tokens}
    for streams, figures in rounds.items():
        result.update({f"{key}@{streams}": value for key, value in figures.items()})
    result["speedup_32_vs_1"] = rounds[32]["tokens_per_sec"] / rounds[1]["tokens_per_sec"]
    return result
