"""KV-cached, batched, streaming generation with the chat format's calculator tool.

The engine works on token ids only; the tokenizer is needed just for the special tokens and to
read and write the calculator's text. A prompt is encoded once (a one-row prefill) and its cache
replicated into every row of a decode cache, so `num_samples` continuations cost one prompt pass.
Then every step samples one column of tokens, one per row, from the newest logits.

Each row is a `RowDecoder`, which decides what the row actually emits and keeps its own state:
- it stops at <|assistant_end|> or <|bos|> (the other rows go on);
- between <|python_start|> and <|python_end|> it collects a calculator expression; when the block
  closes, it queues <|output_start|> result <|output_end|> and emits those tokens next instead of
  the sampled ones (mask 0 for a forced token, 1 for a sampled one).
"""

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import torch

from llm.inference.calculator import calculate
from llm.model.gpt import ROTARY_LENGTH_FACTOR
from llm.model.kv_cache import KVCache


def sample_next_token(logits: torch.Tensor, generator: torch.Generator, temperature: float,
                      top_k: int | None, top_p: float | None = None) -> torch.Tensor:
    """One token per row of (B, vocab) logits, as (B, 1).

    Temperature 0 is the argmax. Otherwise the draw is from softmax(logits / temperature), over
    the whole vocabulary, or with top_k > 0 over the k largest logits only: the generator then
    picks a position among those k, in the order topk returns them, which fixes what a seed draws.
    top_p < 1 (nucleus sampling) then keeps only the most likely of those, the fewest whose
    probabilities sum to at least top_p.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    nucleus = top_p is not None and top_p < 1.0
    if (top_k is None or top_k <= 0) and not nucleus:
        return torch.multinomial((logits / temperature).softmax(dim=-1), num_samples=1, generator=generator)
    k = logits.size(-1) if top_k is None or top_k <= 0 else min(top_k, logits.size(-1))
    kept = logits.topk(k, dim=-1)  # sorted, most likely first
    probabilities = (kept.values / temperature).softmax(dim=-1)
    if nucleus:
        # A token stays if the ones before it sum to less than top_p (the first one always does).
        before = probabilities.cumsum(dim=-1) - probabilities
        probabilities = probabilities.masked_fill(before >= top_p, 0.0)
    position = torch.multinomial(probabilities, num_samples=1, generator=generator)
    return kept.indices.gather(-1, position)


@torch.inference_mode()
def greedy_uncached(model: torch.nn.Module, tokens: list[int], max_tokens: int) -> Iterator[int]:
    """Argmax continuation by a full forward over the whole sequence per token: the slow baseline."""
    ids = torch.tensor([tokens], dtype=torch.long, device=next(model.parameters()).device)
    for _ in range(max_tokens):
        next_id = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        yield int(next_id.item())


@dataclass(frozen=True)
class ChatTokens:
    """The special tokens of the chat format that decoding acts on."""
    python_start: int
    python_end: int
    output_start: int
    output_end: int
    stops: frozenset[int]

    @classmethod
    def of(cls, tokenizer) -> "ChatTokens":
        special = tokenizer.encode_special
        return cls(special("<|python_start|>"), special("<|python_end|>"), special("<|output_start|>"),
                   special("<|output_end|>"), frozenset({special("<|assistant_end|>"), tokenizer.bos_id}))


class RowDecoder:
    """One sample being decoded: what it emits each step, its reply so far and its tool call."""

    def __init__(self, chat: ChatTokens, tokenizer):
        self.chat, self.tokenizer = chat, tokenizer
        self.reply: list[int] = []  # emitted tokens, the stop token excluded
        self.reply_mask: list[int] = []  # 1 where the token was sampled, 0 where forced
        self.stopped = False
        self._forced: deque[int] = deque()  # tool output still to be emitted
        self._expression: list[int] | None = None  # tokens since <|python_start|>; None outside a call

    def emit(self, proposal: int) -> tuple[int, int]:
        """The row's next token, given the sampler's proposal for it, and 1 if sampled / 0 if forced.

        A stopped row still emits (its column entry is filler) but no longer changes its state.
        """
        sampled = 0 if self._forced else 1
        token = proposal if sampled else self._forced.popleft()
        if not self.stopped:
            self._take(token, sampled)
        return token, sampled

    def _take(self, token: int, sampled: int) -> None:
        if token in self.chat.stops:
            self.stopped = True
            return
        self.reply.append(token)
        self.reply_mask.append(sampled)
        if token == self.chat.python_start:
            self._expression = []
        elif self._expression is None:
            return
        elif token == self.chat.python_end:
            self._forced.extend(self._tool_output(self._expression))
            self._expression = None
        else:
            self._expression.append(token)

    def _tool_output(self, expression: list[int]) -> list[int]:
        """The tokens that answer a calculator call; none for an empty or refused expression."""
        result = calculate(self.tokenizer.decode(expression)) if expression else None
        if result is None:
            return []
        return [self.chat.output_start, *self.tokenizer.encode(str(result)), self.chat.output_end]


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.chat = ChatTokens.of(tokenizer)
        self.stop_tokens = self.chat.stops  # a front-end streaming one row stops where the row does

    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 42) -> Iterator[tuple[list[int], list[int]]]:
        """Stream (next token of each row, 1 if it was sampled / 0 if forced) one step at a time.

        Stops after `max_tokens` steps, when every row has stopped, or when the cache is full
        (without max_tokens it holds the model's sequence_len). Arguments are checked here, before
        the first step, so a bad prompt fails at the call rather than mid-stream.
        """
        _, steps = self._start(tokens, num_samples, max_tokens, temperature, top_k, seed)
        return steps

    def generate_batch(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                       temperature: float = 1.0, top_k: int | None = None,
                       seed: int = 42) -> tuple[list[list[int]], list[list[int]]]:
        """Whole sequences (prompt + reply, stop token excluded) and masks (0 on the prompt and forced tokens)."""
        rows, steps = self._start(tokens, num_samples, max_tokens, temperature, top_k, seed)
        for _ in steps:
            pass
        return ([list(tokens) + row.reply for row in rows],
                [[0] * len(tokens) + row.reply_mask for row in rows])

    def _start(self, tokens, num_samples, max_tokens, temperature, top_k, seed):
        """Check a request and set up its rows and (not yet started) step stream."""
        config = self.model.config
        if not tokens or not all(isinstance(t, int) and 0 <= t < config.vocab_size for t in tokens):
            raise ValueError(f"tokens must be a non-empty list of ids in [0, {config.vocab_size})")
        if len(tokens) > config.sequence_len:
            raise ValueError(f"the prompt has {len(tokens)} tokens but the model's context is "
                             f"{config.sequence_len}: shorten the prompt")
        if num_samples < 1 or temperature < 0 or (max_tokens is not None and max_tokens < 0):
            raise ValueError("num_samples must be >= 1, temperature >= 0 and max_tokens >= 0 (or None)")
        capacity = config.sequence_len if max_tokens is None else len(tokens) + max_tokens
        positions = ROTARY_LENGTH_FACTOR * config.sequence_len
        if capacity > positions:
            raise ValueError(f"prompt + max_tokens = {capacity} tokens is past the {positions} positions the "
                             "model can encode: lower max_tokens")
        rows = [RowDecoder(self.chat, self.tokenizer) for _ in range(num_samples)]
        return rows, self._steps(tokens, rows, max_tokens, capacity, temperature, top_k, seed)

    @torch.inference_mode()
    def _steps(self, tokens, rows, max_tokens, capacity, temperature, top_k, seed):
        if max_tokens == 0:
            return
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

        prompt_cache = KVCache.for_model(self.model, rows=1, capacity=len(tokens))
        logits = self.model(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=prompt_cache)
        # Every row draws its own first token from the prompt's one distribution.
        logits = logits[:, -1, :].expand(len(rows), -1)
        cache = prompt_cache.replicated(rows=len(rows), capacity=capacity)
        del prompt_cache  # its memory is not needed while decoding

        for step in itertools.count(1):
            proposals = sample_next_token(logits, generator, temperature, top_k)[:, 0].tolist()
            emitted = [row.emit(proposal) for row, proposal in zip(rows, proposals)]
            column, mask = [token for token, _ in emitted], [sampled for _, sampled in emitted]
            yield column, mask
            # The column just yielded is not in the cache yet: it would go in at cache.filled.
            if step == max_tokens or all(row.stopped for row in rows) or cache.filled == capacity:
                return
            ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)
            logits = self.model(ids, kv_cache=cache)[:, -1, :]
