"""The HTTP face of the replicas: the reference's streaming chat route, an OpenAI-compatible API, the UI.

    POST /chat/completions      SSE: data: {"token": text, "part": kind} ..., then data: {"done": true, ...}
    POST /v1/chat/completions   OpenAI's chat completions, streamed (chunks, then data: [DONE]) or not
    GET  /v1/models             the one model served
    GET  /health, /stats        readiness; rows, queues and counters of every replica
    GET  /                      the chat page (llm/serve/ui/)

A request is checked (llm/serve/requests.py), rendered into a prompt and handed to the pool; its
tokens come back through an asyncio queue. When a client goes away mid-stream, the response is
cancelled and the request marked abandoned, which frees its row at the replica's next step.
"""

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from llm.inference.reply_text import ReplyText, readable
from llm.serve.requests import (ChatRequest, CompletionRequest, RequestError, StopWatch, check_limits,
                                prompt_tokens, sampling_of, stop_strings)
from llm.serve.scheduler import Pool, Request, Sampling

UI_DIR = Path(__file__).parent / "ui"


class Completion:
    """One stream of a reply: submitted to the pool, read back as text pieces."""

    def __init__(self, pool: Pool, tokenizer, prompt: list[int], sampling: Sampling):
        self.pool, self.prompt = pool, prompt
        self.request = Request(prompt, sampling, asyncio.get_running_loop())
        self.text = ReplyText(tokenizer)
        self.tokens = 0
        self.finish_reason: str | None = None

    async def pieces(self):
        """Batches of pieces: whatever arrived since the last one (a slow reader gets fewer, larger batches)."""
        self.pool.submit(self.request)
        try:
            while self.finish_reason is None:
                events = [await self.request.events.get()]
                while not self.request.events.empty():
                    events.append(self.request.events.get_nowait())
                batch = []
                for kind, value in events:
                    if kind == "error":
                        raise RuntimeError(value)
                    if kind == "end":
                        self.finish_reason = value
                        batch += self.text.finish()
                        break
                    self.tokens += 1
                    batch += self.text.add(value)
                if batch:
                    yield batch
        finally:
            if self.finish_reason is None:  # the reader stopped early or went away
                self.request.cancelled = True

    async def readable_deltas(self, stops: list[str]):
        """The reply as readable text (tool calls inline), cut at the first stop string."""
        watch = StopWatch(stops)
        async with aclosing(self.pieces()) as pieces:
            async for batch in pieces:
                text, stopped = watch.feed(readable(batch))
                if text:
                    yield text
                if stopped:
                    self.finish_reason = "stop"
                    return
        if rest := watch.flush():
            yield rest


def _sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(completions: list[Completion]) -> dict:
    generated = sum(c.tokens for c in completions)
    prompt = len(completions[0].prompt)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def build_app(pool: Pool, tokenizer, context: int, defaults: Sampling, model_id: str) -> FastAPI:
    app = FastAPI(title="llm chat server")
    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

    @app.exception_handler(RequestError)
    async def refused(_, exc: RequestError):
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def malformed(_, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error(400, f"malformed request: {where + ': ' if where else ''}{first.get('msg', 'invalid')}")

    def completions_for(body: ChatRequest, choices: int = 1) -> list[Completion]:
        check_limits(body)
        prompt = prompt_tokens(tokenizer, body, context)
        return [Completion(pool, tokenizer, prompt, sampling_of(body, defaults, i)) for i in range(choices)]

    @app.post("/chat/completions")
    async def chat(body: ChatRequest):
        [completion] = completions_for(body)

        async def events():
            try:
                async for batch in completion.pieces():
                    if events := "".join(_sse({"token": p.text, "part": p.kind}) for p in batch if p.text):
                        yield events
            except RuntimeError as failure:
                yield _sse({"error": str(failure)})
                return
            yield _sse({"done": True, "finish_reason": completion.finish_reason, "usage": _usage([completion])})

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def openai_chat(body: CompletionRequest):
        completions = completions_for(body, body.n)
        stops = stop_strings(body)
        header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        if not body.stream:
            async def whole(completion: Completion) -> str:
                return "".join([text async for text in completion.readable_deltas(stops)])

            texts = await asyncio.gather(*(whole(c) for c in completions))
            choices = [{"index": i, "message": {"role": "assistant", "content": text},
                        "finish_reason": c.finish_reason} for i, (c, text) in enumerate(zip(completions, texts))]
            return {**header, "object": "chat.completion", "choices": choices, "usage": _usage(completions)}
        return StreamingResponse(_stream_chunks(completions, stops, header), media_type="text/event-stream")

    async def _stream_chunks(completions: list[Completion], stops: list[str], header: dict):
        def chunk(index: int, delta: dict, finish_reason: str | None = None) -> str:
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
            return _sse({**header, "object": "chat.completion.chunk", "choices": [choice]})

        merged: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, completion: Completion):
            try:
                async for text in completion.readable_deltas(stops):
                    await merged.put((index, text))
                await merged.put((index, None))
            except RuntimeError as failure:
                await merged.put((index, failure))

        for index in range(len(completions)):
            yield chunk(index, {"role": "assistant", "content": ""})
        tasks = [asyncio.create_task(pump(i, c)) for i, c in enumerate(completions)]
        try:
            for _ in completions:
                while True:
                    index, item = await merged.get()
                    if isinstance(item, str):
                        yield chunk(index, {"content": item})
                        continue
                    if isinstance(item, RuntimeError):
                        yield _sse({"error": {"message": str(item), "type": "server_error"}})
                    else:
                        yield chunk(index, {}, completions[index].finish_reason)
                    break
            yield _sse({**header, "object": "chat.completion.chunk", "choices": [], "usage": _usage(completions)})
            yield _sse("[DONE]")
        finally:
            for task in tasks:  # a client that left: the pumps' requests are abandoned too
                task.cancel()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "llm"}]}

    @app.get("/health")
    async def health():
        stats = pool.stats()
        return {"status": "ok", "ready": True, "model": model_id, "workers": len(pool.replicas),
                "free_rows": stats["rows"] - stats["active"]}

    @app.get("/stats")
    async def stats():
        return pool.stats()

    @app.get("/")
    async def page():
        return FileResponse(UI_DIR / "index.html")

    return app
