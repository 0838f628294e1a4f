"""The transformer, its attention kernels and its inference cache."""

from llm.config.derived import ModelShape
from llm.model.attention import active_backend, set_backend
from llm.model.gpt import GPT
from llm.model.kv_cache import KVCache

__all__ = ["GPT", "KVCache", "ModelShape", "active_backend", "set_backend"]
