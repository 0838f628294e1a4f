"""Continuous batching: one thread per model replica steps every active request together.

A replica owns a RowCache with a row per request it is decoding. Between steps its thread admits
waiting requests (each prompt prefilled alone, then loaded into a free row), drops the finished and
the abandoned ones (a client that went away frees its row before the next step), and runs one
forward over all active rows: one token for every stream per pass, so the tokens per second of the
replica grow with the number of streams until the matmuls stop being memory-bound.

Requests beyond the rows of every replica wait in a replica's queue. Each request samples with its
own settings and its own seeded generator, so what it produces does not depend on its neighbours.
Events go back to the asyncio side through the request's queue, on the event loop's thread: those
of one step in one hand-over, since waking the event loop once per token costs more than the step.
"""

import asyncio
import queue
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from llm.inference.engine import ChatTokens, RowDecoder, sample_next_token
from llm.model.kv_cache import KVCache, RowCache


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int


@dataclass
class Request:
    """One stream of tokens asked for; `events` receives ("token", id), then ("end", finish_reason)."""
    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the client's side when it goes away
    submitted: float = field(default_factory=time.perf_counter)



def _deliver(items: list[tuple[asyncio.Queue, tuple]]) -> None:
    for events, event in items:
        events.put_nowait(event)


class _Stream:
    """A request being decoded in one row: its sampler, its tool-aware decoder and its progress."""

    def __init__(self, request: Request, chat: ChatTokens, tokenizer, device):
        self.request = request
        self.decoder = RowDecoder(chat, tokenizer)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(request.sampling.seed)
        self.next_input: int | None = None  # the token fed at the next step
        self.finished = False


class Replica:
    def __init__(self, name: str, model: torch.nn.Module, tokenizer, precision: AbstractContextManager,
                 rows: int):
        self.name, self.model, self.tokenizer, self.precision = name, model, tokenizer, precision
        self.device = next(model.parameters()).device
        self.chat = ChatTokens.of(tokenizer)
        self.cache = RowCache.for_model(model, rows=rows, capacity=model.config.sequence_len)
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.streams: list[_Stream] = []  # streams[r] decodes in cache row r
        self._outbox: list[tuple[Request, tuple]] = []  # events of this step, handed over together
        self.counters = {"requests_finished": 0, "requests_cancelled": 0, "tokens_generated": 0, "decode_steps": 0}
        self._thread = threading.Thread(target=self._run, name=f"replica-{name}", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        self.waiting.put(request)

    @property
    def load(self) -> int:
        return len(self.streams) + self.waiting.qsize()

    def stats(self) -> dict:
        return {"name": self.name, "device": str(self.device), "rows": self.cache.rows,
                "active": len(self.streams), "waiting": self.waiting.qsize(), **self.counters}

    def _run(self) -> None:
        with torch.inference_mode(), self.precision:
            while True:
                try:
                    self._admit()
                    self._release()
                    if self.streams:
                        self._step()
                except Exception as error:  # a failed step ends its requests, never the replica
                    for stream in self.streams:
                        self._publish(stream.request, "error", f"{type(error).__name__}: {error}")
                    self.streams.clear()
                    self.cache.active = 0
                self._hand_over()

    def _publish(self, request: Request, *event) -> None:
        self._outbox.append((request, event))

    def _hand_over(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request, event in self._outbox:
            by_loop.setdefault(request.loop, []).append((request.events, event))
        self._outbox = []
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _admit(self) -> None:
        while len(self.streams) < self.cache.rows:
            try:
                # Idle, the thread sleeps here until a request comes.
                request = self.waiting.get(block=not self.streams)
            except queue.Empty:
                return
            if request.cancelled:
                self.counters["requests_cancelled"] += 1
                continue
            self._prefill(request)

    def _prefill(self, request: Request) -> None:
        stream = _Stream(request, self.chat, self.tokenizer, self.device)
        if request.sampling.max_tokens == 0:
            return self._finish(stream, "length")
        prompt_cache = KVCache.for_model(self.model, rows=1, capacity=len(request.prompt))
        ids = torch.tensor([request.prompt], dtype=torch.long, device=self.device)
        logits = self.model(ids, kv_cache=prompt_cache)[:, -1]
        row = len(self.streams)
        self.cache.load(row, prompt_cache)
        self.streams.append(stream)
        self._advance([row], logits)

    def _step(self) -> None:
        self.cache.active = len(self.streams)
        ids = torch.tensor([[stream.next_input] for stream in self.streams], dtype=torch.long, device=self.device)
        logits = self.model(ids, kv_cache=self.cache)[:, -1]
        self.counters["decode_steps"] += 1
        self._advance(list(range(len(self.streams))), logits)

    def _advance(self, rows: list[int], logits: torch.Tensor) -> None:
        """Sample each row's next token from its logits (one row each) and hand it to its request."""
        greedy = logits.argmax(dim=-1).tolist()  # one transfer for every greedy row
        for index, row in enumerate(rows):
            stream = self.streams[row]
            sampling = stream.request.sampling
            proposal = greedy[index]
            if sampling.temperature > 0:
                proposal = int(sample_next_token(logits[index:index + 1], stream.generator, sampling.temperature,
                                                 sampling.top_k, sampling.top_p))
            token, _ = stream.decoder.emit(proposal)
            if stream.decoder.stopped:
                self._finish(stream, "stop")
                continue
            self._publish(stream.request, "token", token)
            self.counters["tokens_generated"] += 1
            stream.next_input = token
            # The token must still fit in the row (it is fed at the next step).
            if len(stream.decoder.reply) == sampling.max_tokens or self.cache.lengths[row] == self.cache.capacity:
                self._finish(stream, "length")

    def _finish(self, stream: _Stream, reason: str) -> None:
        stream.finished = True
        self._publish(stream.request, "end", reason)
        self.counters["requests_finished"] += 1

    def _release(self) -> None:
        """Drop finished and abandoned streams, moving the last active row into each freed one."""
        for row in reversed(range(len(self.streams))):
            stream = self.streams[row]
            if not (stream.finished or stream.request.cancelled):
                continue
            if not stream.finished:
                self.counters["requests_cancelled"] += 1
            last = len(self.streams) - 1
            if row != last:
                self.cache.move(last, row)
                self.streams[row] = self.streams[last]
            self.streams.pop()
        self.cache.active = len(self.streams)


class Pool:
    """The replicas: a request goes to the least loaded one and waits there if all its rows are busy."""

    def __init__(self, replicas: list[Replica]):
        self.replicas = replicas

    def submit(self, request: Request) -> None:
        min(self.replicas, key=lambda replica: replica.load).submit(request)

    def stats(self) -> dict:
        replicas = [replica.stats() for replica in self.replicas]
        totals = {key: sum(r[key] for r in replicas) for key in
                  ("rows", "active", "waiting", "requests_finished", "requests_cancelled", "tokens_generated")}
        return {**totals, "replicas": replicas}
