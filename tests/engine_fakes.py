"""A byte tokenizer and a scripted model, so engine tests can say exactly which tokens come out."""

import torch

from llm.data.tokenizer import Tokenizer
from llm.inference.engine import Engine
from llm.model import ModelShape

SCRIPT_BOOST = 1000.0  # far above the ±15 soft-capped logits of a real model


def byte_tokenizer() -> Tokenizer:
    """A real Tokenizer without merges: ids 0-255 are bytes, the nine special tokens are 256-264."""
    return Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")


class ScriptedModel(torch.nn.Module):
    """Greedy decoding of this model follows a script, whatever the input.

    scripts[row][k] is the k-th token the row should produce after a prompt of prompt_len tokens
    (the first one comes from the batch-1 prefill, hence from scripts[0]; rows past the last script
    follow the last one). None, or running past the
    script, leaves the logits alone: uniform without a base model, the base model's own otherwise.
    A None is where the engine forces tokens and ignores what the model proposes.

    With `base`, the real model runs underneath (filling the KV cache for real) and the script is
    added on top; each call's base logits are kept in `base_logits` for comparisons.
    Every call is recorded in `calls` as (batch, new tokens, cache position, cache length).
    """

    def __init__(self, scripts: list[list[int | None]], prompt_len: int, base: torch.nn.Module | None = None,
                 config: ModelShape | None = None):
        super().__init__()
        self.scripts, self.prompt_len, self.base = scripts, prompt_len, base
        self.config = base.config if base is not None else config or ModelShape(
            depth=2, model_dim=64, n_head=4, n_kv_head=4, head_dim=16, sequence_len=128, window_pattern="SSSL",
            vocab_size=265)
        if base is None:
            self.anchor = torch.nn.Linear(1, 1, bias=False)  # where the engine reads device and dtype
        self.calls, self.base_logits = [], []

    def forward(self, ids, kv_cache=None):
        batch, new = ids.shape
        start = 0 if kv_cache is None else kv_cache.filled
        self.calls.append((batch, new, start, None if kv_cache is None else kv_cache.capacity))
        if self.base is not None:
            logits = self.base(ids, kv_cache=kv_cache)
            self.base_logits.append(logits[:, -1].clone())
        else:
            logits = torch.zeros(batch, new, self.config.vocab_size)
            if kv_cache is not None:
                kv_cache.commit(new)
        for row in range(batch):
            script = self.scripts[min(row, len(self.scripts) - 1)]
            for t in range(new):
                k = start + t - self.prompt_len + 1
                if 0 <= k < len(script) and script[k] is not None:
                    logits[row, t, script[k]] += SCRIPT_BOOST
        return logits


class RecordingEngine(Engine):
    """Keeps every prompt it is given, and points a ScriptedModel's script at the end of each one."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.prompts = []

    def _start(self, tokens, *args, **kwargs):
        self.prompts.append(list(tokens))
        self.model.prompt_len = len(tokens)
        return super()._start(tokens, *args, **kwargs)
