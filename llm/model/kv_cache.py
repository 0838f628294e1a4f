"""Pre-allocated key/value cache for autoregressive decoding.

The layout is the one FlashAttention-3's `flash_attn_with_kvcache` writes into in place:
(batch, time, kv_heads, head_dim) per layer, with one int32 fill level per batch row. All
layers share one tensor so a whole cache can be copied (prefill) in a single operation.
"""

import torch


class KVCache:
    def __init__(self, batch_size, num_heads, seq_len, head_dim, num_layers, device, dtype):
        # num_heads counts key/value heads (n_kv_head), which is fewer than query heads under GQA.
        self.batch_size = batch_size
        self.num_heads = num_heads
        self.seq_len = seq_len
        self.head_dim = head_dim
        self.num_layers = num_layers
        shape = (num_layers, batch_size, seq_len, num_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # FA3 takes the fill level as int32, one entry per row.
        self.cache_seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)

    def get_pos(self):
        """How many tokens are cached; rotary offsets assume every row is at the same position."""
        return int(self.cache_seqlens[0].item())

    def layer(self, index):
        """Views (k, v) of one layer's cache; attention writes new entries through them."""
        return self.k[index], self.v[index]

    def advance(self, num_tokens):
        """Record that every layer has stored num_tokens more positions (called after the last layer)."""
        self.cache_seqlens += num_tokens

    def reset(self):
        # Stale entries stay in memory but are never attended to: attention only reads up to the fill level.
        self.cache_seqlens.zero_()

    def prefill(self, other):
        """Copy another cache's filled prefix into this empty one, repeating a batch-1 cache over every row.

        This lets one prompt be encoded once and then decoded into several samples in parallel.
        """
        if self.get_pos() != 0:
            raise ValueError("prefill needs an empty KVCache; call reset() first")
        same_geometry = (other.num_layers, other.num_heads, other.head_dim) == (
            self.num_layers,
            self.num_heads,
            self.head_dim,
        )
        if not same_geometry:
            raise ValueError(
                f"cannot prefill from a cache with (layers, heads, head_dim) = "
                f"({other.num_layers}, {other.num_heads}, {other.head_dim}); this one has "
                f"({self.num_layers}, {self.num_heads}, {self.head_dim}): build both caches for the same model"
            )
        if other.batch_size not in (1, self.batch_size):
            raise ValueError(
                f"cannot prefill {self.batch_size} rows from a cache of {other.batch_size} rows: "
                "the source must have batch size 1 or the same batch size"
            )
        length = other.get_pos()
        if length > self.seq_len:
            raise ValueError(
                f"source cache holds {length} tokens but this one only has room for {self.seq_len}: "
                "allocate the destination with a larger seq_len"
            )
        self.k[:, :, :length] = other.k[:, :, :length]
        self.v[:, :, :length] = other.v[:, :, :length]
        self.cache_seqlens.fill_(length)
