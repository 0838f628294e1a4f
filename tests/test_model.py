"""The GPT: its shape, initialisation, forward/loss, training, KV-cache decoding.

Parameter and FLOP counts are the config layer's (tests/test_config.py holds them equal to the
built model's tensors).
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm.model import GPT, KVCache, ModelShape, attention, set_backend
from llm.model.kv_cache import RowCache
from llm.model.gpt import apply_rotary


@pytest.fixture(autouse=True, scope="module")
def sdpa_attention():
    # Pin the backend so these tests neither depend on nor warn about FA3 availability,
    # then put back whatever choice was in force before.
    saved = attention._requested, attention._active
    set_backend("sdpa")
    yield
    attention._requested, attention._active = saved


def model_shape(depth=12, model_dim=768, n_head=6, n_kv_head=None, sequence_len=2048, vocab_size=32768,
                window_pattern="SSSL"):
    return ModelShape(depth=depth, model_dim=model_dim, n_head=n_head, n_kv_head=n_kv_head or n_head,
                      head_dim=model_dim // n_head, sequence_len=sequence_len, window_pattern=window_pattern,
                      vocab_size=vocab_size)


def meta_model(**shape):
    with torch.device("meta"):
        return GPT(model_shape(**shape))


def tiny_model(seed=0, **overrides):
    config = dict(sequence_len=16, vocab_size=1000, depth=3, n_head=4, n_kv_head=2, model_dim=64, window_pattern="SL")
    config.update(overrides)
    model = meta_model(**config)
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    model.init_weights()
    return model


@torch.no_grad()
def perturb(model, seed=1):
    """Move every weight off its init so zero-initialised projections and gates take part."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))


# -----------------------------------------------------------------------------
# Shape


def test_window_sizes_tile_the_pattern_and_end_long():
    model = meta_model(sequence_len=64, depth=6, n_head=2, n_kv_head=2, model_dim=64, window_pattern="SSSL")
    assert model.window_sizes == [(32, 0), (32, 0), (32, 0), (64, 0), (32, 0), (64, 0)]
    lowercase = meta_model(sequence_len=64, depth=3, n_head=2, n_kv_head=2, model_dim=64, window_pattern="s")
    assert lowercase.window_sizes == [(32, 0), (32, 0), (64, 0)]


@pytest.mark.parametrize("depth, layers", [(1, ["0"]), (4, ["1", "3"]), (5, ["0", "2", "4"])])
def test_value_embeddings_alternate_ending_at_the_last_layer(depth, layers):
    model = meta_model(depth=depth, n_head=2, n_kv_head=2, model_dim=64)
    assert sorted(model.value_embeds) == layers
    assert [str(i) for i, block in enumerate(model.transformer.h) if block.attn.ve_gate is not None] == layers


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n_head=6, n_kv_head=4, model_dim=96), "n_kv_head=4 must divide n_head=6"),
        (dict(n_head=64, model_dim=64), "head_dim=1 must be even"),
        (dict(window_pattern="SXL"), "S and L"),
        (dict(window_pattern=""), "S and L"),
        (dict(n_head=1, n_kv_head=1, model_dim=16), "value gate"),
    ],
)
def test_bad_shape_is_rejected(bad, message):
    config = dict(depth=2, n_head=4, n_kv_head=4, model_dim=64)
    config.update(bad)
    with pytest.raises(ValueError, match=message):
        model_shape(**config)


def test_parameter_groups_cover_every_parameter_once():
    model = meta_model(depth=3, n_head=4, n_kv_head=2, model_dim=64, vocab_size=100)
    groups = model.parameter_groups()
    assert list(groups) == ["lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "matrices"]
    grouped = [p for params in groups.values() for p in params]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    gates = [block.attn.ve_gate.weight for block in model.transformer.h if block.attn.ve_gate is not None]
    assert len(gates) == 2 and all(any(g is p for p in groups["matrices"]) for g in gates)
    assert len(groups["value_embeds"]) == 2 and all(p.dim() == 2 for p in groups["matrices"])


# -----------------------------------------------------------------------------
# Initialisation


def test_init_weights_distributions():
    model = tiny_model(model_dim=256, n_head=4, n_kv_head=4, vocab_size=4096, depth=3)
    assert not any(p.is_meta for p in model.parameters()) and not model.cos.is_meta
    bound = math.sqrt(3 / 256)
    assert abs(model.transformer.wte.weight.std().item() - 1.0) < 0.01
    assert abs(model.lm_head.weight.std().item() - 0.001) < 0.0001
    for block in model.transformer.h:
        for weight in (block.attn.c_q.weight, block.attn.c_k.weight, block.attn.c_v.weight, block.mlp.c_fc.weight):
            assert weight.abs().max() <= bound and abs(weight.std().item() - 256**-0.5) < 0.003
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert block.attn.ve_gate is None or not block.attn.ve_gate.weight.any()
    for embedding in model.value_embeds.values():
        assert embedding.weight.abs().max() <= bound and abs(embedding.weight.std().item() - 256**-0.5) < 0.003
    assert torch.equal(model.resid_lambdas, torch.ones(3))
    assert torch.equal(model.x0_lambdas, torch.full((3,), 0.1))
    assert model.transformer.wte.weight.dtype == torch.float32  # bf16 only on CUDA


def test_rotary_tables():
    model = tiny_model()
    head_dim = 16
    assert model.cos.shape == (1, 160, 1, head_dim // 2) and model.cos.dtype == torch.bfloat16
    position, pair = 37, 3
    angle = position / 10000 ** (2 * pair / head_dim)
    assert model.cos[0, position, 0, pair].item() == pytest.approx(math.cos(angle), abs=4e-3)
    assert model.sin[0, position, 0, pair].item() == pytest.approx(math.sin(angle), abs=4e-3)


def test_rotary_scores_depend_only_on_relative_position():
    # fp32 tables built here: the model's bf16 ones are too coarse for an exact invariance check.
    angles = torch.arange(64.0).outer(10000 ** -(torch.arange(0, 16, 2) / 16))[None, :, None, :]
    cos, sin = angles.cos(), angles.sin()
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=generator), torch.randn(1, 1, 1, 16, generator=generator)

    def rotate(x, position):
        return apply_rotary(x, cos[:, position : position + 1], sin[:, position : position + 1])

    def score(query_position, key_position):
        return (rotate(q, query_position) * rotate(k, key_position)).sum().item()

    assert score(10, 3) == pytest.approx(score(40, 33), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)
    assert rotate(q, 7).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)  # a rotation keeps lengths


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_embeddings_are_bf16_on_cuda():
    model = meta_model(sequence_len=16, vocab_size=128, depth=2, n_head=2, n_kv_head=2, model_dim=64)
    model.to_empty(device="cuda")
    model.init_weights()
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert all(e.weight.dtype == torch.bfloat16 for e in model.value_embeds.values())
    assert model.lm_head.weight.dtype == torch.float32
    tokens = torch.zeros(1, 16, dtype=torch.long, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(tokens, tokens)
    assert torch.isfinite(loss)


# -----------------------------------------------------------------------------
# Forward and loss


def test_forward_shapes_and_softcap():
    model = tiny_model()
    perturb(model)
    model.lm_head.weight.data.mul_(100)  # push logits into the cap
    logits = model(torch.randint(0, 1000, (2, 16)))
    assert logits.shape == (2, 16, 1000) and logits.dtype == torch.float32  # padding rows 1000..1023 cropped
    assert logits.abs().max() <= 15.0 and logits.abs().max() > 14.0


def test_initial_loss_is_near_uniform():
    model = tiny_model()
    tokens = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    loss = model(tokens, tokens)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(1000), abs=0.02)


def test_ignored_targets_and_unreduced_loss():
    model = tiny_model()
    perturb(model)
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    targets = tokens.clone()
    targets[:, :5] = -1
    per_token = model(tokens, targets, loss_reduction="none")
    assert per_token.shape == (32,)
    assert not per_token.view(2, 16)[:, :5].any() and (per_token.view(2, 16)[:, 5:] > 0).all()
    torch.testing.assert_close(model(tokens, targets), per_token.view(2, 16)[:, 5:].mean())


def test_too_long_input_is_a_clear_error():
    model = tiny_model()  # sequence_len 16: rotary tables cover 160 positions
    with pytest.raises(ValueError, match="rotary tables .*model.sequence_len"):
        model(torch.zeros(1, 161, dtype=torch.long))
    cache = KVCache(model.config, rows=1, capacity=8, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="allocate a longer KVCache"):
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)


def test_adamw_steps_reduce_loss_on_a_fixed_batch():
    model = tiny_model(vocab_size=128, depth=2)
    tokens = torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(8):
        loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


# -----------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("pattern", ["L", "SL"])
@torch.no_grad()
def test_kv_cache_decoding_matches_full_forward(pattern):
    model = tiny_model(window_pattern=pattern)
    perturb(model)
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    full = model(tokens)
    cache = KVCache.for_model(model, rows=2, capacity=16)
    steps = [model(tokens[:, :6], kv_cache=cache)]
    steps += [model(tokens[:, t : t + 1], kv_cache=cache) for t in range(6, 16)]
    assert cache.filled == 16 and cache.fill_levels.tolist() == [16, 16]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_sliding_window_changes_the_logits():
    # Makes the test above meaningful for "SL": the short window (8 of 16) must actually cut context.
    tokens = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    logits = {}
    for pattern in ("L", "SL"):
        model = tiny_model(window_pattern=pattern)
        perturb(model)
        logits[pattern] = model(tokens)
    torch.testing.assert_close(logits["L"][:, :9], logits["SL"][:, :9])
    assert (logits["L"][:, 9:] - logits["SL"][:, 9:]).abs().max() > 1e-3


@torch.no_grad()
def test_one_prompt_prefilled_into_several_rows():
    model = tiny_model()
    perturb(model)
    prompt = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(0))
    continuations = torch.tensor([[7], [300]])
    prompt_cache = KVCache.for_model(model, rows=1, capacity=5)
    model(prompt, kv_cache=prompt_cache)
    cache = prompt_cache.replicated(rows=2, capacity=16)
    decoded = model(continuations, kv_cache=cache)
    full = model(torch.cat([prompt.expand(2, 5), continuations], dim=1))
    torch.testing.assert_close(decoded[:, 0], full[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern", ["L", "SL"])
@torch.no_grad()
def test_rows_at_their_own_lengths_decode_as_if_alone(pattern):
    # Three prompts of different lengths join a RowCache at different steps; one finishes and the
    # last row moves into its place. Every row's logits stay those of its own full forward.
    model = tiny_model(window_pattern=pattern)
    perturb(model)
    sequences = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(1))
    starts = [3, 6, 5]  # prompt lengths; row r joins at step r
    full = model(sequences)
    cache = RowCache.for_model(model, rows=3, capacity=16)
    owners, decoded = [], {r: [] for r in range(3)}  # owners[row] = which sequence the row holds
    for step in range(9):
        if step < 3:
            prompt_cache = KVCache.for_model(model, rows=1, capacity=starts[step])
            model(sequences[step : step + 1, : starts[step]], kv_cache=prompt_cache)
            cache.load(len(owners), prompt_cache)
            owners.append(step)
            cache.active = len(owners)
        if step == 6:  # sequence 0 leaves; the last row takes its place
            cache.move(len(owners) - 1, 0)
            owners = [owners[-1], *owners[1:-1]]
            cache.active = len(owners)
        column = torch.stack([sequences[s, cache.lengths[row]] for row, s in enumerate(owners)]).unsqueeze(1)
        positions = list(cache.lengths[: cache.active])
        logits = model(column, kv_cache=cache)[:, 0]
        for row, s in enumerate(owners):
            decoded[s].append((positions[row], logits[row]))
    for s, steps in decoded.items():
        assert len(steps) >= 3
        for position, logits in steps:
            torch.testing.assert_close(logits, full[s, position], atol=1e-4, rtol=1e-4)
    assert cache.lengths[: cache.active] == [starts[2] + 7, starts[1] + 8]


def test_kv_cache_bookkeeping():
    config = model_shape(depth=5, model_dim=48, n_head=12, n_kv_head=3)
    cache = KVCache(config, rows=2, capacity=10, device="cpu", dtype=torch.float32)
    assert cache.keys.shape == cache.values.shape == (5, 2, 10, 3, 4)
    assert (cache.rows, cache.capacity, cache.filled) == (2, 10, 0) and cache.fill_levels.dtype == torch.int32
    cache.commit(4)
    cache.commit(2)
    assert cache.filled == 6 and cache.fill_levels.tolist() == [6, 6]
    slot = cache.layer(3)
    assert slot.filled == 6 and slot.fill_levels is cache.fill_levels
    slot.keys[1, 0, 2, 1] = 5.0
    slot.values[0, 1, 0, 0] = 6.0
    assert cache.keys[3, 1, 0, 2, 1] == 5.0 and cache.values[3, 0, 1, 0, 0] == 6.0, "layer() returns views"


def test_kv_cache_replicates_a_prompt_into_every_row():
    config = model_shape(depth=3, model_dim=32, n_head=4, n_kv_head=2)
    source = KVCache(config, rows=1, capacity=6, device="cpu", dtype=torch.float32)
    source.keys.normal_()
    source.values.normal_()
    source.commit(4)
    target = source.replicated(rows=3, capacity=12)
    assert (target.rows, target.capacity, target.filled) == (3, 12, 4) and target.fill_levels.tolist() == [4, 4, 4]
    for row in range(3):
        assert torch.equal(target.keys[:, row, :4], source.keys[:, 0, :4])
        assert torch.equal(target.values[:, row, :4], source.values[:, 0, :4])
    assert not target.keys[:, :, 4:].any() and not target.values[:, :, 4:].any()
    with pytest.raises(ValueError, match="rows=1"):
        target.replicated(rows=6, capacity=12)
    with pytest.raises(ValueError, match="larger capacity"):
        source.replicated(rows=3, capacity=3)


def test_model_package_imports_nothing_from_the_rest_of_the_system():
    # The model must stay usable on its own (notebooks, inference): no Hydra, trainer, data or optimizer code.
    probe = (
        "import sys, llm.model; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'kernels') "
        "or m.startswith(('llm.train', 'llm.data', 'llm.optim'))))"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=repo)
    assert result.stdout.strip() == "[]"
