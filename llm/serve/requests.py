"""What a chat request may ask for, checked before it reaches a replica, and its prompt.

The limits are the reference server's: they keep one request from holding a replica for long or
filling its memory. Each refusal is a 400 whose message names the limit, so a client can fix it.
"""

import random
import sys

from pydantic import BaseModel, ConfigDict

from llm.data.conversation import ASSISTANT_START
from llm.serve.scheduler import Sampling

MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8000
MAX_CONVERSATION_CHARS = 32000
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (1, 200)
MAX_TOKENS_RANGE = (1, 4096)
MAX_CHOICES = 8  # n: completions of one prompt
MAX_STOPS = 4  # stop strings, as OpenAI allows


class RequestError(Exception):
    """A request the server refuses: answered with status 400 and this message."""


class Message(BaseModel):
    role: str
    content: str | list[dict]  # an assistant reply may come back as the chat format's parts


class ChatRequest(BaseModel):
    """The reference's /chat/completions body; the OpenAI route adds its own fields."""
    model_config = ConfigDict(extra="ignore")
    messages: list[Message]
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


class CompletionRequest(ChatRequest):
    model: str | None = None
    stream: bool = False
    n: int = 1
    stop: str | list[str] | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


def _text_of(content: str | list[dict]) -> str:
    return content if isinstance(content, str) else "".join(str(part.get("text", "")) for part in content)


def _within(name: str, value, bounds) -> None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise RequestError(f"{name} must be between {bounds[0]} and {bounds[1]}, got {value}")


def check_limits(request: ChatRequest) -> None:
    if not request.messages:
        raise RequestError("messages is empty: send at least one user message")
    if len(request.messages) > MAX_MESSAGES:
        raise RequestError(f"{len(request.messages)} messages: at most {MAX_MESSAGES} messages per request")
    total = 0
    for index, message in enumerate(request.messages):
        length = len(_text_of(message.content))
        if length == 0 and message.role != "assistant":  # a model may well have replied nothing
            raise RequestError(f"message {index} is empty: every message needs some content")
        if length > MAX_MESSAGE_CHARS:
            raise RequestError(f"message {index} has {length} characters: at most {MAX_MESSAGE_CHARS} "
                               "characters per message")
        total += length
    if total > MAX_CONVERSATION_CHARS:
        raise RequestError(f"the conversation has {total} characters: at most {MAX_CONVERSATION_CHARS} "
                           "characters per conversation")
    _within("temperature", request.temperature, TEMPERATURE_RANGE)
    _within("top_k", request.top_k, TOP_K_RANGE)
    _within("top_p", request.top_p, (1e-9, 1.0))
    _within("max_tokens", request.max_tokens, MAX_TOKENS_RANGE)
    if isinstance(request, CompletionRequest):
        _within("max_completion_tokens", request.max_completion_tokens, MAX_TOKENS_RANGE)
        _within("n", request.n, (1, MAX_CHOICES))
        if len(stop_strings(request)) > MAX_STOPS:
            raise RequestError(f"stop has {len(stop_strings(request))} strings: at most {MAX_STOPS}")


def stop_strings(request: CompletionRequest) -> list[str]:
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    return [stop for stop in stops if stop]


def prompt_tokens(tokenizer, request: ChatRequest, context: int) -> list[int]:
    """The conversation rendered as fine-tuning renders it, then <|assistant_start|>."""
    messages = [message.model_dump() for message in request.messages]
    try:
        # Uncut: a conversation past the context is refused below rather than silently shortened.
        rendered = tokenizer.render_conversation({"messages": messages}, max_tokens=sys.maxsize)[0]
    except ValueError as error:
        raise RequestError(str(error))
    if messages[-1]["role"] != "user":
        raise RequestError(f"message {len(messages) - 1} is from {messages[-1]['role']}: the conversation must "
                           "end with a user message for the model to answer")
    prompt = [*rendered, tokenizer.encode_special(ASSISTANT_START)]
    if len(prompt) >= context:
        raise RequestError(f"the conversation is {len(prompt)} tokens but the model's context is {context}: "
                           "start a new conversation or shorten it")
    return prompt


def sampling_of(request: ChatRequest, defaults: Sampling, choice: int = 0) -> Sampling:
    """The request's settings over the server's defaults; choice i of n draws with seed + i."""
    max_tokens = request.max_tokens
    if isinstance(request, CompletionRequest) and request.max_completion_tokens is not None:
        max_tokens = request.max_completion_tokens
    seed = request.seed if request.seed is not None else random.randrange(2**31)
    return Sampling(max_tokens=max_tokens if max_tokens is not None else defaults.max_tokens,
                    temperature=request.temperature if request.temperature is not None else defaults.temperature,
                    top_k=request.top_k if request.top_k is not None else defaults.top_k,
                    top_p=request.top_p, seed=seed + choice)


class StopWatch:
    """Cuts a streamed text at the first stop string, holding back what could be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(stop) for stop in stops), default=1) - 1
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was reached)."""
        self.pending += text
        hits = [self.pending.find(stop) for stop in self.stops if stop in self.pending]
        if hits:
            return self.pending[:min(hits)], True
        cut = max(0, len(self.pending) - self.hold)
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        return ready, False

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest
