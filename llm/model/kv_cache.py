"""The keys and values a decoding model has already computed, so each new token costs one position.

The cache is shaped by its one consumer, the attention layer. A layer asks for its slot and gets
its key and value buffers, in the (rows, positions, kv_heads, head_dim) layout FA3's decode kernel
writes into in place, and the position the new tokens go to. All rows of a cache decode in lockstep
(the engine feeds one column of tokens per step), so that position is a single Python int: the
rotary offset and the SDPA path read it without waiting on the device. FA3 takes the same number
as an int32 tensor with one entry per row, which the cache keeps alongside and advances with it.

A server decodes many requests at once, each at its own length, joining and leaving between steps:
`RowCache` gives each request a row with its own fill level. A request is prefilled alone in a
one-row KVCache, moved into a free row, and from then on advances one token per step with the rest.
"""

from typing import NamedTuple

import torch


class LayerSlot(NamedTuple):
    """What one attention layer reads and writes: its buffers and how far they are filled."""
    keys: torch.Tensor  # (rows, capacity, kv_heads, head_dim); the new keys go in at `filled`
    values: torch.Tensor
    filled: int | None  # where every row's new keys go; None when each row is at its own fill level
    fill_levels: torch.Tensor  # (rows,) int32: where each row's new keys go (all equal to `filled` if set)
    span: int | None = None  # rows at their own levels: positions the longest row holds after this step


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


class KVCache:
    def __init__(self, config, rows: int, capacity: int, device, dtype: torch.dtype):
        """Room for `capacity` positions of `rows` sequences, for a model of this ModelShape."""
        self.config = config
        shape = (config.depth, rows, capacity, config.n_kv_head, config.head_dim)
        # One tensor for all layers, so replicating a prompt is one copy per buffer.
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.filled = 0
        self.fill_levels = torch.zeros(rows, dtype=torch.int32, device=device)

    @classmethod
    def for_model(cls, model: torch.nn.Module, rows: int, capacity: int) -> "KVCache":
        """An empty cache on the model's device, in the dtype its attention produces keys and values."""
        return cls(model.config, rows, capacity, next(model.parameters()).device, cache_dtype(model))

    @property
    def rows(self) -> int:
        return self.keys.size(1)

    @property
    def capacity(self) -> int:
        return self.keys.size(2)

    def layer(self, index: int) -> LayerSlot:
        return LayerSlot(self.keys[index], self.values[index], self.filled, self.fill_levels)

    def positions(self, count: int) -> tuple[slice, int]:
        """The positions of `count` new tokens (the same in every row), and the end of the longest row."""
        end = self.filled + count
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions but {end} are needed; allocate a longer KVCache")
        return slice(self.filled, end), end

    def commit(self, count: int) -> None:
        """Every layer has written `count` more positions (the model calls this after its last layer)."""
        self.filled += count
        self.fill_levels += count

    def replicated(self, rows: int, capacity: int) -> "KVCache":
        """A new cache whose every row starts with this one-row cache's positions.

        One prompt is encoded once and then continued as `rows` independent samples.
        """
        if self.rows != 1:
            raise ValueError(f"only a one-row cache can be replicated, this one has {self.rows} rows: "
                             "encode the prompt with rows=1")
        if capacity < self.filled:
            raise ValueError(f"{self.filled} positions are filled but the new cache would hold {capacity}: "
                             "give it a larger capacity")
        copy = KVCache(self.config, rows, capacity, self.keys.device, self.keys.dtype)
        copy.keys[:, :, :self.filled] = self.keys[:, :, :self.filled]
        copy.values[:, :, :self.filled] = self.values[:, :, :self.filled]
        copy.commit(self.filled)
        return copy


class RowCache:
    """Rows of independent sequences, each at its own length; rows [0, active) take part in a step.

    Each step feeds one token per active row. The scheduler that owns the cache keeps the active
    rows packed at the front: a finished row is overwritten by the last active one (`move`), so a
    step never computes a row nobody reads. The lengths are kept on the host too, so the attention
    span is known without waiting on the device.
    """

    def __init__(self, config, rows: int, capacity: int, device, dtype: torch.dtype):
        shape = (config.depth, rows, capacity, config.n_kv_head, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * rows
        self.fill_levels = torch.zeros(rows, dtype=torch.int32, device=device)
        self.active = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, rows: int, capacity: int) -> "RowCache":
        return cls(model.config, rows, capacity, next(model.parameters()).device, cache_dtype(model))

    @property
    def rows(self) -> int:
        return self.keys.size(1)

    @property
    def capacity(self) -> int:
        return self.keys.size(2)

    def load(self, row: int, prompt: KVCache) -> None:
        """Row `row` now holds the sequence a one-row cache holds (a freshly prefilled prompt)."""
        if prompt.filled > self.capacity:
            raise ValueError(f"the prompt fills {prompt.filled} positions but a row holds {self.capacity}: "
                             "shorten the prompt")
        self.keys[:, row, :prompt.filled] = prompt.keys[:, 0, :prompt.filled]
        self.values[:, row, :prompt.filled] = prompt.values[:, 0, :prompt.filled]
        self._set_length(row, prompt.filled)

    def move(self, source: int, target: int) -> None:
        """Row `target` takes over row `source`'s sequence (whatever `target` held is dropped)."""
        length = self.lengths[source]
        self.keys[:, target, :length] = self.keys[:, source, :length]
        self.values[:, target, :length] = self.values[:, source, :length]
        self._set_length(target, length)

    def _set_length(self, row: int, length: int) -> None:
        self.lengths[row] = length
        self.fill_levels[row] = length

    def layer(self, index: int) -> LayerSlot:
        span = max(self.lengths[:self.active]) + 1
        return LayerSlot(self.keys[index, :self.active], self.values[index, :self.active], None,
                         self.fill_levels[:self.active], span)

    def positions(self, count: int) -> tuple[torch.Tensor, int]:
        """Each active row's position for its one new token, as (active, 1), and the longest row's end."""
        if count != 1:
            raise ValueError(f"rows at their own lengths advance one token per step, not {count}: "
                             "prefill a prompt in a one-row KVCache and load it")
        end = max(self.lengths[:self.active]) + 1
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions but {end} are needed; allocate a longer KVCache")
        return self.fill_levels[:self.active].long().unsqueeze(1), end

    def commit(self, count: int) -> None:
        for row in range(self.active):
            self.lengths[row] += count
        self.fill_levels[:self.active] += count
