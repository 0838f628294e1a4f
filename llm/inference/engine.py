"""KV-cached, batched, streaming generation with the chat format's calculator tool.

The engine works on token ids only; the tokenizer is needed just for the special tokens and to
read and write the calculator's text. One prompt is encoded once (a batch-1 prefill) and its keys
and values are copied into every row of a decode cache, so `num_samples` continuations cost one
prompt pass. Each row then keeps its own state:

- it completes when it emits <|assistant_end|> or <|bos|> (the other rows go on);
- between <|python_start|> and <|python_end|> it collects a calculator expression; when the block
  closes, the result is queued as forced tokens <|output_start|> result <|output_end|>, which the
  row emits next instead of sampling (its mask entry is 0 for those, 1 for sampled tokens).
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from llm.inference.calculator import calculate
from llm.model.gpt import ROTARY_LENGTH_FACTOR
from llm.model.kv_cache import KVCache


def sample_next_token(logits: torch.Tensor, generator: torch.Generator, temperature: float,
                      top_k: int | None) -> torch.Tensor:
    """One token per row of (B, vocab) logits, as (B, 1): the argmax at temperature 0, else a draw
    from softmax(logits / temperature), with every token outside the row's top_k masked out."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    scaled = logits / temperature
    if top_k is not None and 0 < top_k < scaled.size(-1):
        kept = scaled.topk(top_k, dim=-1)  # exactly k per row, ties included or not as topk decides
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, kept.indices, kept.values)
    return torch.multinomial(scaled.softmax(dim=-1), num_samples=1, generator=generator)


def cache_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype keys and values come out of their projections in, which the cache must match exactly.

    Under autocast that is the autocast dtype; otherwise the dtype of the linear layers' weights.
    Neither the device nor the first parameter will do: on CUDA the embeddings are bf16 while the
    matmul weights stay fp32.
    """
    weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Linear))
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def new_cache(model: torch.nn.Module, batch_size: int, seq_len: int) -> KVCache:
    config = model.config
    weight = next(model.parameters())
    return KVCache(batch_size=batch_size, num_heads=config.n_kv_head, seq_len=seq_len, head_dim=config.head_dim,
                   num_layers=config.depth, device=weight.device, dtype=cache_dtype(model))


@torch.inference_mode()
def greedy_uncached(model: torch.nn.Module, tokens: list[int], max_tokens: int) -> Iterator[int]:
    """Argmax continuation by a full forward over the whole sequence per token: the slow baseline."""
    ids = torch.tensor([tokens], dtype=torch.long, device=next(model.parameters()).device)
    for _ in range(max_tokens):
        next_id = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        yield int(next_id.item())


@dataclass
class RowState:
    forced: deque = field(default_factory=deque)  # tokens to emit before sampling again
    expression: list[int] | None = None  # tokens since <|python_start|>; None outside a tool call
    completed: bool = False


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        special = tokenizer.encode_special
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.stop_tokens = {special("<|assistant_end|>"), tokenizer.bos_id}

    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 42) -> Iterator[tuple[list[int], list[int]]]:
        """Stream (next token of each row, 1 if it was sampled / 0 if forced) one step at a time.

        Stops after `max_tokens` steps, when every row has completed, or when the cache is full
        (without max_tokens it holds the model's sequence_len). Arguments are checked here, before
        the first step, so a bad prompt fails at the call rather than mid-stream.
        """
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
        return self._stream(tokens, num_samples, max_tokens, capacity, temperature, top_k, seed)

    @torch.inference_mode()
    def _stream(self, tokens, num_samples, max_tokens, capacity, temperature, top_k, seed):
        if max_tokens == 0:
            return
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

        prompt_cache = new_cache(self.model, 1, len(tokens))
        logits = self.model(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=prompt_cache)
        # Every row samples its own first token from the same distribution.
        logits = logits[:, -1, :].expand(num_samples, -1)
        cache = new_cache(self.model, num_samples, capacity)
        cache.prefill(prompt_cache)
        del prompt_cache

        rows = [RowState() for _ in range(num_samples)]
        generated = 0
        while True:
            sampled = sample_next_token(logits, generator, temperature, top_k)[:, 0].tolist()
            column, mask = [], []
            for row, sampled_token in zip(rows, sampled):
                forced = bool(row.forced)
                token = row.forced.popleft() if forced else sampled_token
                column.append(token)
                mask.append(0 if forced else 1)
                if not row.completed:  # a finished row's tokens are filler: no tool calls, no state
                    self._advance(row, token)
            yield column, mask
            generated += 1
            cached = len(tokens) + generated - 1  # positions in the cache; the newest tokens are not yet in
            if generated == max_tokens or all(row.completed for row in rows) or cached == capacity:
                return
            ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)
            logits = self.model(ids, kv_cache=cache)[:, -1, :]

    def _advance(self, row: RowState, token: int) -> None:
        """Run the stop and tool-call state machine on a row's newest token."""
        if token in self.stop_tokens:
            row.completed = True
        if token == self.python_start:
            row.expression = []
        elif token == self.python_end and row.expression is not None:
            if row.expression:
                result = calculate(self.tokenizer.decode(row.expression))
                if result is not None:
                    row.forced.extend([self.output_start, *self.tokenizer.encode(str(result)), self.output_end])
            row.expression = None
        elif row.expression is not None:
            row.expression.append(token)

    def generate_batch(self, tokens: list[int], num_samples: int = 1,
                       **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Whole sequences (prompt + reply, stop token excluded) and masks (0 on the prompt and forced tokens)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        completed = [False] * num_samples
        for column, column_mask in self.generate(tokens, num_samples, **kwargs):
            for i, (token, sampled) in enumerate(zip(column, column_mask)):
                if completed[i]:
                    continue
                if token in self.stop_tokens:
                    completed[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(sampled)
            if all(completed):
                break
        return results, masks
