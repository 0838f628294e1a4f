"""The SDPA attention path against a naive softmax attention, and backend selection."""

import math
import sys
import types
import warnings

import pytest
import torch

from llm.model import attention
from llm.model.attention import attend, attend_with_kv_cache
from llm.model.kv_cache import LayerSlot

FP32_TOL = dict(atol=1e-5, rtol=1e-5)
BF16_TOL = dict(atol=2e-2, rtol=2e-2)


def naive_attention(q, k, v, query_positions, left):
    """Explicit-mask softmax attention in fp64. Keys sit at positions 0..Tk-1; query_positions is (B, Tq)."""
    group = q.size(2) // k.size(2)
    q, k, v = q.double(), k.repeat_interleave(group, dim=2).double(), v.repeat_interleave(group, dim=2).double()
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.size(-1))
    offset = query_positions[:, None, :, None] - torch.arange(k.size(1))
    allowed = offset >= 0
    if left >= 0:
        allowed &= offset <= left
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)


def random_qkv(batch, seq, n_head, n_kv_head, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, n_head, head_dim, generator=generator).to(dtype)
    k = torch.randn(batch, seq, n_kv_head, head_dim, generator=generator).to(dtype)
    v = torch.randn(batch, seq, n_kv_head, head_dim, generator=generator).to(dtype)
    return q, k, v


@pytest.fixture
def fresh_backend(monkeypatch):
    """Forget any backend resolved by earlier tests; monkeypatch restores the real state afterwards."""
    pristine = {"_requested": "auto", "_active": None, "_fa3": None, "_fa3_failure": None, "_fallback_warned": False}
    for name, value in pristine.items():
        monkeypatch.setattr(attention, name, value)


@pytest.fixture
def sdpa_backend(fresh_backend):
    attention.set_backend("sdpa")


# -----------------------------------------------------------------------------
# Training path


def check_attend_against_naive(dtype, seq_len, n_kv_head, head_dim, left, tolerance):
    q, k, v = random_qkv(2, seq_len, 4, n_kv_head, head_dim, dtype)
    y = attend(q, k, v, (left, 0))
    assert y.shape == q.shape and y.dtype == dtype
    positions = torch.arange(seq_len).expand(2, seq_len)
    torch.testing.assert_close(y.double(), naive_attention(q, k, v, positions, left), **tolerance)


# T = 16: left 15 still reaches position 0 (plain causal), 14 is the first window that cuts anything.
@pytest.mark.parametrize("left", [-1, 16, 15, 14, 5, 0])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attend_matches_naive_fp32(sdpa_backend, left, n_kv_head):
    check_attend_against_naive(torch.float32, 16, n_kv_head, 8, left, FP32_TOL)


@pytest.mark.parametrize("left", [-1, 6])
def test_attend_matches_naive_bf16(sdpa_backend, left):
    check_attend_against_naive(torch.bfloat16, 32, 2, 16, left, BF16_TOL)


@pytest.mark.parametrize("left", [-1, 3])
def test_attend_gradients_match_naive(sdpa_backend, left):
    q, k, v = (t.requires_grad_() for t in random_qkv(2, 12, 4, 2, 8, torch.float32))
    positions = torch.arange(12).expand(2, 12)
    upstream = torch.randn(2, 12, 4, 8, generator=torch.Generator().manual_seed(1))
    (attend(q, k, v, (left, 0)) * upstream).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (naive_attention(q, k, v, positions, left) * upstream.double()).sum().backward()
    for mine, reference in zip(ours, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, reference.float(), **FP32_TOL)


def test_window_changes_the_output(sdpa_backend):
    # Guards the tests above against a window that is silently ignored.
    q, k, v = random_qkv(1, 16, 2, 2, 8, torch.float32)
    full, windowed = attend(q, k, v, (-1, 0)), attend(q, k, v, (4, 0))
    torch.testing.assert_close(full[:, :5], windowed[:, :5])
    assert (full[:, 5:] - windowed[:, 5:]).abs().max() > 1e-3


# -----------------------------------------------------------------------------
# KV-cache path


def decode_in_chunks(q_all, k_all, v_all, start, chunks, left, cache_len):
    """Feed q/k/v through attend_with_kv_cache chunk by chunk, after `start` positions already cached.

    Returns each chunk's output with the reference for it, the final buffers and fill level.
    """
    batch, _, n_kv_head, head_dim = k_all.shape
    keys = torch.zeros(batch, cache_len, n_kv_head, head_dim, dtype=k_all.dtype)
    values = torch.zeros_like(keys)
    keys[:, :start], values[:, :start] = k_all[:, :start], v_all[:, :start]
    filled = start
    results = []
    for length in chunks:
        positions = torch.arange(filled, filled + length)
        q, k, v = q_all[:, positions], k_all[:, positions], v_all[:, positions]
        fill_levels = torch.full((batch,), filled, dtype=torch.int32)
        y = attend_with_kv_cache(q, k, v, LayerSlot(keys, values, filled, fill_levels), (left, 0))
        assert y.shape == q.shape
        results.append((y, naive_attention(q, k_all, v_all, positions.expand(batch, -1), left)))
        filled += length
    return results, keys, values, filled


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, FP32_TOL), (torch.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("left", [-1, 3])
@pytest.mark.parametrize("start", [0, 5])
def test_kv_cache_prefill_then_decode(sdpa_backend, dtype, tolerance, left, start):
    q_all, k_all, v_all = random_qkv(3, 20, 4, 2, 8, dtype)
    chunks = [4, 1, 1, 1, 3, 1, 1]
    results, keys, values, filled = decode_in_chunks(q_all, k_all, v_all, start, chunks, left, cache_len=24)
    for y, reference in results:
        torch.testing.assert_close(y.double(), reference, **tolerance)
    assert filled == start + sum(chunks)
    assert torch.equal(keys[:, :filled], k_all[:, :filled]) and torch.equal(values[:, :filled], v_all[:, :filled])
    assert not keys[:, filled:].any(), "nothing is written past the fill level"


def test_kv_cache_decoding_matches_training_path(sdpa_backend):
    q, k, v = random_qkv(2, 12, 4, 1, 8, torch.float32)
    full = attend(q, k, v, (4, 0))
    results, *_ = decode_in_chunks(q, k, v, 0, [5] + [1] * 7, left=4, cache_len=12)
    torch.testing.assert_close(torch.cat([y for y, _ in results], dim=1), full, **FP32_TOL)


# -----------------------------------------------------------------------------
# Backend selection


def fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)


def fake_hopper_with_kernels(monkeypatch, get_kernel):
    """A Hopper GPU, and a `kernels` package whose get_kernel is the given function."""
    fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setitem(sys.modules, "kernels", types.SimpleNamespace(get_kernel=get_kernel))


def raising(error: Exception):
    """A get_kernel that fails with `error`."""
    def get_kernel(*args, **kwargs):
        raise error

    return get_kernel


def test_unknown_backend_is_rejected(fresh_backend):
    with pytest.raises(ValueError, match="auto, fa3, sdpa"):
        attention.set_backend("flash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_fa3_without_cuda_is_a_clear_error(fresh_backend):
    with pytest.raises(RuntimeError, match="'fa3' is unavailable: there is no CUDA device"):
        attention.set_backend("fa3")


def test_fa3_on_a_pre_hopper_gpu_is_a_clear_error(fresh_backend, monkeypatch):
    fake_gpu(monkeypatch, (8, 0))
    with pytest.raises(RuntimeError, match="Hopper .*sm80"):
        attention.set_backend("fa3")


def test_auto_falls_back_to_sdpa_and_warns_once(fresh_backend, monkeypatch):
    fake_hopper_with_kernels(monkeypatch, raising(FileNotFoundError("no local snapshot")))
    q, k, v = random_qkv(1, 4, 2, 2, 8, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attention.set_backend("auto")
        attend(q, k, v, (-1, 0))
        attention.set_backend("auto")
        attend(q, k, v, (-1, 0))
    assert attention.active_backend() == "sdpa"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no local snapshot" in messages[0], messages
    with pytest.raises(RuntimeError, match="no local snapshot"):
        attention.set_backend("fa3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_auto_on_cpu_uses_sdpa_without_a_warning(fresh_backend):
    # FA3 could never apply without CUDA: the run's header names the backend instead (issue 11).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attention.active_backend() == "sdpa"
        attention.set_backend("auto")
        attention.set_backend("sdpa")


def test_programming_errors_from_kernels_are_not_swallowed(fresh_backend, monkeypatch):
    fake_hopper_with_kernels(monkeypatch, raising(ValueError("A kernel version or revision must be specified.")))
    with pytest.raises(ValueError, match="version or revision"):
        attention.set_backend("auto")


def test_loaded_fa3_receives_both_calls(fresh_backend, monkeypatch):
    calls = []

    def record(name):
        def kernel_function(q, *args, **kwargs):
            calls.append((name, kwargs))
            return q

        return kernel_function

    interface = types.SimpleNamespace(flash_attn_func=record("train"), flash_attn_with_kvcache=record("decode"))
    loads = []

    def get_kernel(repo, **kwargs):
        loads.append((repo, kwargs))
        return types.SimpleNamespace(flash_attn_interface=interface)

    fake_hopper_with_kernels(monkeypatch, get_kernel)
    attention.set_backend("fa3")
    assert attention.active_backend() == "fa3"
    pinned = {"revision": attention.FA3_REVISION, "trust_remote_code": [attention.FA3_REPO]}
    assert loads == [(attention.FA3_REPO, pinned)]
    q, k, v = random_qkv(1, 4, 2, 2, 8, torch.float32)
    seqlens = torch.zeros(1, dtype=torch.int32)
    attend(q, k, v, (2, 0))
    attend_with_kv_cache(q, k, v, LayerSlot(k, v, 0, seqlens), (2, 0))
    (train, train_kwargs), (decode, decode_kwargs) = calls
    assert (train, decode) == ("train", "decode")
    assert train_kwargs == {"causal": True, "window_size": (2, 0)}
    assert decode_kwargs["cache_seqlens"] is seqlens and decode_kwargs["k"] is k and decode_kwargs["v"] is v
    assert (decode_kwargs["causal"], decode_kwargs["window_size"]) == (True, (2, 0))
