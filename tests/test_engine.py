"""The generation engine: sampling semantics, the KV-cache path, stopping, and the benchmark."""

import pytest
import torch

from llm.bench.engine import benchmark_engine
from llm.inference.engine import Engine, greedy_uncached, sample_next_token
from llm.model import GPT, ModelShape, attention
from llm.model.kv_cache import cache_dtype
from llm.train.load import load_model
from tests.engine_fakes import ScriptedModel, byte_tokenizer

BYTES = byte_tokenizer()
BOS, ASSISTANT_END = BYTES.bos_id, BYTES.encode_special("<|assistant_end|>")
PROMPT = [BOS, *b"Hello"]


@pytest.fixture(autouse=True)
def sdpa():
    attention.set_backend("sdpa")


def uniform_engine() -> Engine:
    """Uniform logits over the byte vocabulary: any sampling bias or broadcast shows up."""
    return Engine(ScriptedModel([[]], len(PROMPT)), BYTES)


@pytest.fixture(scope="module")
def trained(trained_run):
    model, tokenizer, _ = load_model(trained_run)
    return model, tokenizer


def random_window_model() -> GPT:
    """A small random GPT with a sliding-window layer, weights perturbed so every block matters."""
    torch.manual_seed(0)
    model = GPT(ModelShape(depth=3, model_dim=64, n_head=4, n_kv_head=2, head_dim=16, sequence_len=32,
                           window_pattern="SL", vocab_size=512))
    model.init_weights()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def test_same_seed_reproduces_and_seeds_differ():
    engine = uniform_engine()
    for seed in (1, 42, 123):
        runs = [engine.generate_batch(PROMPT, num_samples=3, max_tokens=6, seed=seed)[0] for _ in range(3)]
        assert runs[0] == runs[1] == runs[2]
    outputs = {tuple(engine.generate_batch(PROMPT, max_tokens=6, seed=seed)[0][0]) for seed in range(10)}
    assert len(outputs) > 1


def test_temperature_zero_ignores_the_seed(trained):
    model, tokenizer = trained
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode("def main():", prepend=tokenizer.bos_id)
    results = [engine.generate_batch(prompt, max_tokens=12, temperature=0.0, seed=seed)[0] for seed in (1, 2, 3)]
    assert results[0] == results[1] == results[2]


def test_top_k_one_is_greedy(trained):
    model, tokenizer = trained
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode("import os", prepend=tokenizer.bos_id)
    greedy = engine.generate_batch(prompt, max_tokens=12, temperature=0.0)[0]
    assert engine.generate_batch(prompt, max_tokens=12, temperature=1.5, top_k=1, seed=7)[0] == greedy


def test_top_k_restricts_the_choices():
    engine = uniform_engine()
    # Uniform logits tie everywhere; torch.topk then keeps k of them, and samples must stay within those k.
    columns = [column for column, _ in engine.generate(PROMPT, num_samples=64, max_tokens=1, top_k=3, seed=0)]
    assert 1 <= len(set(columns[0])) <= 3


def draw_among_top_k(logits, generator, temperature, top_k):
    """The reference's sampling, restated: rank the logits, keep the first k, and let the generator
    pick a rank from the softmax of the kept ones (the whole vocabulary when top_k is None)."""
    if top_k is None:
        return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)
    ranked, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    keep = min(top_k, logits.size(-1))
    rank = torch.multinomial(torch.softmax(ranked[:, :keep] / temperature, dim=-1), 1, generator=generator)
    return torch.take_along_dim(ids[:, :keep], rank, dim=-1)


@pytest.mark.parametrize("top_k, temperature", [(5, 1.0), (50, 0.7), (300, 1.3), (1000, 1.0), (None, 0.9)])
def test_seeded_draws_equal_the_reference_formulation(top_k, temperature):
    # Distinct random logits: no ties, so ranking by sort and by topk agree on the order.
    logits = 3 * torch.randn(8, 300, generator=torch.Generator().manual_seed(1))
    engine_rng, reference_rng = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    for _ in range(100):  # 800 draws, each advancing both generators the same way
        drawn = sample_next_token(logits, engine_rng, temperature, top_k)
        assert torch.equal(drawn, draw_among_top_k(logits, reference_rng, temperature, top_k))


def test_top_k_zero_samples_the_whole_vocabulary():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    zero = sample_next_token(logits, torch.Generator().manual_seed(5), 1.0, 0)
    assert torch.equal(zero, sample_next_token(logits, torch.Generator().manual_seed(5), 1.0, None))


@torch.no_grad()
def reference_generate_batch(model, prompt, num_samples, max_tokens, temperature, top_k, seed):
    """What the reference's engine returns for a prompt, computed without any cache.

    One generator seeded once; the first draw for every row comes from the prompt's last logits,
    each later one from a full forward over the row so far. A row ends at a stop token (excluded);
    the rows keep stepping together until all have ended or max_tokens steps have run.
    """
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.tensor([prompt])
    logits = model(sequences)[:, -1].expand(num_samples, -1)
    sequences = sequences.expand(num_samples, -1)
    replies, ended = [[] for _ in range(num_samples)], [False] * num_samples
    for _ in range(max_tokens):
        column = draw_among_top_k(logits, generator, temperature, top_k)
        for row, token in enumerate(column[:, 0].tolist()):
            if not ended[row]:
                ended[row] = token in (BOS, ASSISTANT_END)
                replies[row] += [] if ended[row] else [token]
        if all(ended):
            break
        sequences = torch.cat([sequences, column], dim=1)
        logits = model(sequences)[:, -1]
    return [prompt + reply for reply in replies]


@pytest.mark.parametrize("top_k, temperature, seed", [(8, 1.0, 0), (40, 0.8, 1), (None, 1.0, 2), (600, 1.2, 3)])
def test_sampled_generation_equals_the_reference_token_for_token(top_k, temperature, seed):
    model = random_window_model()
    prompt = [BOS, *b"top-k"]
    kwargs = dict(num_samples=3, max_tokens=20, temperature=temperature, top_k=top_k, seed=seed)
    expected = reference_generate_batch(model, prompt, **kwargs)
    tool_tokens = {BYTES.encode_special(name) for name in ("<|python_start|>", "<|python_end|>")}
    assert not tool_tokens & {t for row in expected for t in row}, "a row called the calculator; pick another seed"
    results, masks = Engine(model, BYTES).generate_batch(prompt, **kwargs)
    assert results == expected
    assert masks == [[0] * len(prompt) + [1] * (len(row) - len(prompt)) for row in expected]


@pytest.mark.parametrize("max_tokens", [0, 1, 4, 16])
def test_max_tokens_is_respected(max_tokens):
    steps = list(uniform_engine().generate(PROMPT, max_tokens=max_tokens, seed=3))
    assert len(steps) == max_tokens  # uniform logits rarely stop early, and a stop ends before the limit
    results, masks = uniform_engine().generate_batch(PROMPT, max_tokens=max_tokens, seed=3)
    assert len(results[0]) - len(PROMPT) <= max_tokens and len(masks[0]) == len(results[0])


@pytest.mark.parametrize("num_samples", [1, 4, 16])
def test_num_samples_rows_each_sampled_independently(num_samples):
    results, masks = uniform_engine().generate_batch(PROMPT, num_samples=num_samples, max_tokens=3)
    assert len(results) == len(masks) == num_samples
    assert all(r[:len(PROMPT)] == PROMPT for r in results)
    first = [column for column, _ in uniform_engine().generate(PROMPT, num_samples=16, max_tokens=1)][0]
    assert len(set(first)) > 1  # sixteen identical first tokens would mean one sample broadcast to all rows


def test_samples_differ_at_temperature_one(trained):
    model, tokenizer = trained
    prompt = tokenizer.encode("class", prepend=tokenizer.bos_id)
    results, _ = Engine(model, tokenizer).generate_batch(prompt, num_samples=6, max_tokens=10, temperature=1.0)
    assert len({tuple(r) for r in results}) > 1


def test_prompt_is_prefilled_once_then_rows_decode_over_one_cache():
    model = ScriptedModel([[]], len(PROMPT))
    list(Engine(model, BYTES).generate(PROMPT, num_samples=5, max_tokens=4))
    # (batch, new tokens, cache position, cache length): one batch-1 prefill, then one token per step.
    assert model.calls == [(1, 6, 0, 6), (5, 1, 6, 10), (5, 1, 7, 10), (5, 1, 8, 10)]


def test_without_max_tokens_generation_stops_when_the_context_is_full():
    model = ScriptedModel([[]], len(PROMPT), config=ModelShape(
        depth=1, model_dim=32, n_head=2, n_kv_head=2, head_dim=16, sequence_len=16, window_pattern="SSSL",
        vocab_size=265))
    # Always writing the same ordinary byte keeps the rows from stopping on a special token.
    model.scripts = [[ord("x")] * 100]
    steps = list(Engine(model, BYTES).generate(PROMPT))
    assert len(steps) == 16 - len(PROMPT) + 1  # the last token is sampled from the full cache's logits


@pytest.mark.parametrize("stop", ["<|assistant_end|>", "<|bos|>"])
def test_a_row_stops_on_its_stop_token_while_others_go_on(stop):
    stop_id = BYTES.encode_special(stop)
    a, b, c = ord("a"), ord("b"), ord("c")
    model = ScriptedModel([[a, stop_id, c, c], [a, b, b, stop_id]], len(PROMPT))
    engine = Engine(model, BYTES)
    columns = [column for column, _ in engine.generate(PROMPT, num_samples=2, max_tokens=10, temperature=0.0)]
    assert len(columns) == 4  # ends when the last row stops, not at max_tokens
    results, masks = engine.generate_batch(PROMPT, num_samples=2, max_tokens=10, temperature=0.0)
    assert results == [PROMPT + [a], PROMPT + [a, b, b]]  # stop tokens are not part of the result
    assert masks == [[0] * len(PROMPT) + [1], [0] * len(PROMPT) + [1, 1, 1]]


def cached_stream(engine, prompt, max_tokens, num_samples=1):
    return [column for column, _ in engine.generate(prompt, num_samples, max_tokens=max_tokens, temperature=0.0)]


def test_cached_generation_equals_uncached_on_the_trained_model(trained):
    model, tokenizer = trained
    prompt = tokenizer.encode("def __init__(self, name):", prepend=tokenizer.bos_id)
    max_tokens = model.config.sequence_len - len(prompt)  # crosses the short window of the S layer
    columns = cached_stream(Engine(model, tokenizer), prompt, max_tokens, num_samples=2)
    assert all(column[0] == column[1] for column in columns)
    assert [column[0] for column in columns] == list(greedy_uncached(model, prompt, len(columns)))
    assert len(columns) > model.config.sequence_len // 2 - len(prompt)


def test_cached_generation_equals_uncached_on_a_random_sliding_window_model():
    model = random_window_model()
    prompt = [BOS, *b"sliding windows"]
    # 16 + 40 tokens: past the S window (16) and past sequence_len (32), where the L window slides too.
    columns = cached_stream(Engine(model, BYTES), prompt, 40)
    assert len(columns) == 40, "the random model hit a stop token; pick another prompt"
    assert [column[0] for column in columns] == list(greedy_uncached(model, prompt, 40))


# The layouts init_weights leaves: on CUDA lookup tables in bf16 and matmul weights in fp32; on
# CPU everything in fp32, so under autocast the value embeddings meet bf16 values.
@pytest.mark.parametrize("table_dtype", [torch.bfloat16, torch.float32], ids=["cuda_layout", "cpu_layout"])
def test_cache_follows_the_projection_dtype_under_bf16_autocast(table_dtype):
    model = random_window_model()
    model.transformer.wte.to(dtype=table_dtype)
    model.value_embeds.to(dtype=table_dtype)
    assert cache_dtype(model) == torch.float32
    prompt = [BOS, *b"bf16"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cache_dtype(model) == torch.bfloat16
        columns = cached_stream(Engine(model, BYTES), prompt, 8)
        uncached = list(greedy_uncached(model, prompt, 8))
    assert len(columns) == 8
    # bf16 rounding differs between the two paths, so only the first, most certain tokens must agree.
    assert [column[0] for column in columns][:2] == uncached[:2]


def test_bad_requests_fail_at_the_call():
    engine = uniform_engine()
    with pytest.raises(ValueError, match="context is 128"):
        engine.generate([BOS] * 129)
    with pytest.raises(ValueError, match="non-empty list"):
        engine.generate([])
    with pytest.raises(ValueError, match="lower max_tokens"):
        engine.generate(PROMPT, max_tokens=10_000)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(PROMPT, temperature=-1.0)


def test_benchmark_reports_prefill_and_both_decode_rates(trained_run):
    result = benchmark_engine(trained_run, repeats=1, warmup=0, prompt_tokens=16, new_tokens=16, device="cpu")
    for key in ("prefill_tokens_per_sec", "decode_tokens_per_sec_cached", "decode_tokens_per_sec_uncached"):
        assert result[key] > 0
    assert result["prompt_tokens"] == 16 and result["new_tokens"] == 16 and result["depth"] == 2
    with pytest.raises(ValueError, match="exceeds the context"):
        benchmark_engine(trained_run, prompt_tokens=60, new_tokens=10, device="cpu")
