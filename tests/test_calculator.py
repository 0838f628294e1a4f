"""The calculator tool: what it computes, what it refuses, and how the engine injects its results."""

import time

import pytest
import torch

from llm.inference.calculator import calculate
from llm.inference.engine import Engine
from llm.model import attention
from llm.train.load import load_model
from tests.engine_fakes import ScriptedModel, byte_tokenizer


@pytest.mark.parametrize("expression, value", [
    ("2+3*4", 14), ("(2 + 3) * 4", 20), ("7/2", 3.5), ("7//2", 3), ("-7 % 3", 2), ("2**10", 1024),
    ("2 ** -1", 0.5), ("-(3) + +2", -1), ("1,234 * 2", 2468), ("0.1 + 0.2", 0.1 + 0.2), ("1e3 / 8", 125.0),
    ("'strawberry'.count('r')", 3), ('"banana".count("an") + 1', 3), ("'a,b,c'.count(',')", 2),
])
def test_arithmetic_and_count(expression, value):
    result = calculate(expression)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('touch MARKER')",
    "open('MARKER', 'w')",
    "().__class__.__bases__[0].__subclasses__()",
    "x + 1", "abs(-1)", "'abc'.upper()", "'abc'.count(x)", "'abc'.count('a', 1)", "'abc'.count(sub='a')",
    "(1).count('a')", "[i for i in range(3)]", "lambda: 1", "'a' * 3", "'abc'", "True + 1", "None",
    "1 if 1 else 2", "1 < 2", "[1][0]", "{1: 2}", "1; 2", "f'{1}'", "1j * 2",
    "1/0", "5 % 0", "(-8) ** 0.5", "9**9**9", "10**100", "2**400", "0.5 ** -2000", "10.0 ** 400",
    "1" * 101, "1 +" * 200 + "1", "", "   ", "2 +",
])
def test_refused_without_running(expression, tmp_path):
    marker = tmp_path / "ran"
    started = time.monotonic()
    assert calculate(expression.replace("MARKER", str(marker))) is None
    assert time.monotonic() - started < 0.5  # refused up front, not computed and then thrown away
    assert not marker.exists()


def test_pathological_nesting_is_refused_or_computed_never_raised():
    for expression in ["(" * 150 + "1" + ")" * 150, "-" * 400 + "1", "(" * 300 + "1" + ")" * 300]:
        assert calculate(expression) in (None, 1)


def test_deadline_stops_evaluation():
    assert calculate("1 + 1", time_limit_s=-1.0) is None
    assert calculate("1 + 1") == 2


# --- the engine's tool-use path ----------------------------------------------------------------------

BYTES = byte_tokenizer()
PYTHON_START, PYTHON_END = BYTES.encode_special("<|python_start|>"), BYTES.encode_special("<|python_end|>")
OUTPUT_START, OUTPUT_END = BYTES.encode_special("<|output_start|>"), BYTES.encode_special("<|output_end|>")
ASSISTANT_END = BYTES.encode_special("<|assistant_end|>")
PROMPT = [BYTES.bos_id, BYTES.encode_special("<|user_start|>"), *b"6 times 7?", BYTES.encode_special("<|user_end|>"),
          BYTES.encode_special("<|assistant_start|>")]


@pytest.fixture(autouse=True)
def sdpa():
    attention.set_backend("sdpa")


def tool_call(expression: bytes, output_len: int) -> list[int | None]:
    """A scripted tool call: the expression, then None where the engine forces the output."""
    return [PYTHON_START, *expression, PYTHON_END, *[None] * (output_len + 2)]


def test_result_is_forced_into_the_calling_row_only():
    a, b = ord("a"), ord("b")
    scripts = [[a, *tool_call(b"6*7", 2), ASSISTANT_END], [a, b, b, ASSISTANT_END]]
    results, masks = Engine(ScriptedModel(scripts, len(PROMPT)), BYTES).generate_batch(
        PROMPT, num_samples=2, max_tokens=20, temperature=0.0)
    call = [a, PYTHON_START, *b"6*7", PYTHON_END]
    assert results[0] == PROMPT + call + [OUTPUT_START, *b"42", OUTPUT_END]
    assert masks[0] == [0] * len(PROMPT) + [1] * len(call) + [0] * 4
    assert results[1] == PROMPT + [a, b, b] and masks[1] == [0] * len(PROMPT) + [1, 1, 1]


def test_a_rendered_conversation_is_the_prompt():
    """The chat stages feed the engine Tokenizer.render_for_completion's ids as they are."""
    conversation = {"messages": [{"role": "user", "content": "6 times 7?"}, {"role": "assistant", "content": "42"}]}
    prompt = BYTES.render_for_completion(conversation)
    script = [*tool_call(b"6*7", 2), *b"42", ASSISTANT_END]
    results, masks = Engine(ScriptedModel([script], len(prompt)), BYTES).generate_batch(
        prompt, max_tokens=20, temperature=0.0)
    assert results[0] == prompt + [PYTHON_START, *b"6*7", PYTHON_END, OUTPUT_START, *b"42", OUTPUT_END, *b"42"]
    assert masks[0][len(prompt):] == [1] * 5 + [0] * 4 + [1] * 2


def test_refused_expression_injects_nothing():
    expression = b"__import__('os')"
    script = [PYTHON_START, *expression, PYTHON_END, ord("k"), ASSISTANT_END]
    results, masks = Engine(ScriptedModel([script], len(PROMPT)), BYTES).generate_batch(
        PROMPT, max_tokens=40, temperature=0.0)
    assert results[0] == PROMPT + script[:-1]
    assert OUTPUT_START not in results[0] and masks[0][len(PROMPT):] == [1] * (len(script) - 1)


def test_tool_use_on_the_trained_model_and_its_tokenizer(trained_run):
    """The real model under the script: forced tokens must enter its KV cache like any others."""
    model, tokenizer, _ = load_model(trained_run)
    special = tokenizer.encode_special
    prompt = [tokenizer.bos_id, special("<|user_start|>"), *tokenizer.encode("what is 12 times 34?"),
              special("<|user_end|>"), special("<|assistant_start|>")]
    expression, output = tokenizer.encode("12 * 34"), tokenizer.encode("408")
    script = [special("<|python_start|>"), *expression, special("<|python_end|>"), *[None] * (len(output) + 2),
              special("<|assistant_end|>")]
    scripted = ScriptedModel([script], len(prompt), base=model)
    results, masks = Engine(scripted, tokenizer).generate_batch(prompt, max_tokens=30, temperature=0.0)
    reply = results[0][len(prompt):]
    forced = [special("<|output_start|>"), *output, special("<|output_end|>")]
    assert reply == script[:len(expression) + 2] + forced
    assert masks[0][len(prompt):] == [1] * (len(expression) + 2) + [0] * len(forced)
    # Decoding through the cache, forced tokens included, saw what one full forward sees.
    full = model(torch.tensor([results[0]]))[0, len(prompt) - 1:]
    torch.testing.assert_close(torch.cat(scripted.base_logits), full, atol=1e-4, rtol=1e-4)
