"""Causal attention kernels: FlashAttention-3 on Hopper, PyTorch SDPA everywhere else.

The model calls two functions and never sees which backend runs them:

    attend(q, k, v, window_size)                      training and plain evaluation
    attend_with_kv_cache(q, k, v, slot, window_size)  incremental decoding over a KV-cache slot

Tensors use FA3's (batch, time, heads, head_dim) layout. k/v may have fewer heads than q
(grouped-query attention); query head h reads key/value head h // (n_head // n_kv_head).
window_size is FA3's (left, right) pair: query i sees keys j with i - left <= j <= i, and
left = -1 means unlimited. Only right = 0 (causal) is used.

FA3 comes from the Hugging Face kernel hub through the `kernels` package. Loading it touches the
network (or the local hub cache), so it happens lazily, once per process, and only on a Hopper GPU.
"""

import os
import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "fa3", "sdpa")
FA3_REPO = "varunneal/flash-attention-3"
# Pinned so a kernel update on the hub cannot silently change numerics between runs.
FA3_REVISION = "de87b9b5af06dd9984df595bef90b2eba44b181a"

_requested = "auto"  # what set_backend asked for
_active = None  # "fa3" or "sdpa" once resolved
_fa3 = None  # FA3's flash_attn_interface module once loaded
_fa3_failure = None  # why FA3 cannot be used, once a load has been tried and failed
_fallback_warned = False


class _FA3Unavailable(Exception):
    pass


def _fetch_fa3():
    """Return FA3's interface module, or raise _FA3Unavailable saying why not."""
    if not torch.cuda.is_available():
        raise _FA3Unavailable("there is no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        raise _FA3Unavailable(f"the FA3 kernel is built for Hopper (sm90) and this GPU is sm{major}{minor}")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from huggingface_hub.errors import EntryNotFoundError, HTTPError
        from kernels import get_kernel
    except ImportError as error:
        raise _FA3Unavailable(f"the kernels package cannot be imported ({error}); pip install 'kernels>=0.17'")
    try:
        # The repository's publisher is not on the kernel hub's trusted list, so it is allowlisted by name.
        kernel = get_kernel(FA3_REPO, revision=FA3_REVISION, trust_remote_code=[FA3_REPO])
    except (OSError, RuntimeError, EntryNotFoundError, HTTPError) as error:
        raise _FA3Unavailable(
            f"{FA3_REPO}@{FA3_REVISION[:8]} could not be loaded ({type(error).__name__}: {error}); "
            "run once with network access so the hub cache holds it"
        )
    return kernel.flash_attn_interface


def _load_fa3():
    """Try FA3 once per process; return None when it is usable, else the reason it is not."""
    global _fa3, _fa3_failure
    if _fa3 is None and _fa3_failure is None:
        try:
            _fa3 = _fetch_fa3()
        except _FA3Unavailable as reason:
            _fa3_failure = str(reason)
    return _fa3_failure


# Resolution imports modules and may warn; keep it out of torch.compile graphs. After the first
# call the choice is a plain global that compiled code reads (and guards on) for free.
@torch.compiler.disable
def _resolve(requested):
    global _fallback_warned
    if requested == "sdpa":
        return "sdpa"
    failure = _load_fa3()
    if failure is None:
        return "fa3"
    if requested == "fa3":
        raise RuntimeError(f"attention backend 'fa3' is unavailable: {failure}; use 'auto' or 'sdpa'")
    # Only where FA3 was expected (a CUDA device); elsewhere the run's header names the backend.
    if not _fallback_warned and torch.cuda.is_available():
        warnings.warn(f"FlashAttention-3 unavailable ({failure}); attention falls back to PyTorch SDPA")
        _fallback_warned = True
    return "sdpa"


def set_backend(name):
    """Choose 'auto' (FA3 if loadable, else SDPA), 'fa3' (required) or 'sdpa'.

    Resolves immediately, so a missing FA3 fails here rather than in the middle of a step; call it
    before torch.compile so the compiled graph sees the final choice.
    """
    global _requested, _active
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _requested, _active = name, None
    active_backend()


def active_backend():
    """'fa3' or 'sdpa': the backend attend() uses, resolving the request on first use."""
    global _active
    if _active is None:
        _active = _resolve(_requested)
    return _active


def attend(q, k, v, window_size):
    """Causal self-attention over one sequence chunk, optionally limited to a sliding window."""
    if active_backend() == "fa3":
        return _fa3.flash_attn_func(q, k, v, causal=True, window_size=window_size)
    seq_len = q.size(1)
    left = window_size[0]
    if left < 0 or left >= seq_len - 1:
        # The window reaches back to position 0 for every query: plain causal attention.
        return _sdpa(q, k, v, mask=None)
    positions = torch.arange(seq_len, device=q.device)
    return _sdpa(q, k, v, mask=_causal_window_mask(positions.unsqueeze(1), positions, left))


def attend_with_kv_cache(q, k, v, slot, window_size):
    """Store the new k/v in a KV-cache slot, then let q attend causally over everything cached.

    q: (B, T_new, H, D); k, v: (B, T_new, H_kv, D); slot: the layer's LayerSlot, whose buffers are
    written in place at position slot.filled (the same for every row), or with slot.filled None at
    each row's own fill level (then T_new is 1); the cache advances afterwards.
    """
    if active_backend() == "fa3":
        return _fa3.flash_attn_with_kvcache(q, slot.keys, slot.values, k=k, v=v, cache_seqlens=slot.fill_levels,
                                            causal=True, window_size=window_size)
    if slot.filled is None:
        return _attend_rows_at_own_lengths(q, k, v, slot, window_size[0])
    start, end = slot.filled, slot.filled + q.size(1)
    slot.keys[:, start:end] = k
    slot.values[:, start:end] = v
    # Keys before the oldest position the window lets the first new query see are never read.
    left = window_size[0]
    first_key = 0 if left < 0 else max(0, start - left)
    query_positions = torch.arange(start, end, device=q.device).unsqueeze(1)
    key_positions = torch.arange(first_key, end, device=q.device)
    mask = _causal_window_mask(query_positions, key_positions, left)  # (T_new, keys), shared by rows and heads
    return _sdpa(q, slot.keys[:, first_key:end], slot.values[:, first_key:end], mask=mask)


def _attend_rows_at_own_lengths(q, k, v, slot, left):
    """One new token per row, row b's going in at position fill_levels[b]; rows differ in length.

    Each row's mask ends at its own position, which also hides whatever a shorter row left beyond it.
    """
    levels = slot.fill_levels.long()
    rows = torch.arange(q.size(0), device=q.device)
    slot.keys[rows, levels] = k[:, 0]
    slot.values[rows, levels] = v[:, 0]
    key_positions = torch.arange(slot.span, device=q.device)
    mask = _causal_window_mask(levels.view(-1, 1, 1, 1), key_positions, left)  # (B, 1, 1, keys): per row
    return _sdpa(q, slot.keys[:, :slot.span], slot.values[:, :slot.span], mask=mask)


def _causal_window_mask(query_positions, key_positions, left):
    """True where a query may attend to a key: not in the future and at most `left` steps back.

    The two position tensors broadcast against each other (queries along the second-to-last axis).
    """
    offset = query_positions - key_positions
    allowed = offset >= 0
    if left >= 0:
        allowed &= offset <= left
    return allowed


def _sdpa(q, k, v, mask):
    """SDPA in FA3's layout; causal by flag when mask is None, else by the boolean mask alone.

    SDPA ANDs attn_mask with is_causal, so exactly one of them is passed.
    """
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=k.size(1) != q.size(1)
    )
    return y.transpose(1, 2)
