"""The transformer, its attention kernels and its inference cache."""

from llm.model.attention import active_backend, set_backend
from llm.model.gpt import GPT, GPTConfig
from llm.model.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "active_backend", "set_backend"]
