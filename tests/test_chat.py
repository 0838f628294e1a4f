"""python -m llm.chat as a user runs it: one answer, a conversation on stdin, and bad input."""

import io
import os
import subprocess
import sys

import pytest

from llm.chat import ChatError, Conversation
from llm.inference.engine import Engine
from llm.model import attention
from llm.train.load import load_model
from tests.conftest import REPO
from tests.engine_fakes import RecordingEngine, ScriptedModel, byte_tokenizer

GREEDY = ["--max-tokens", "8", "--temperature", "0", "--device", "cpu"]


def chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm.chat", *map(str, args)], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "2"})


@pytest.fixture(scope="module")
def expected_replies(trained_run):
    """Greedy replies computed here, each prompted by the chat history rendered by the tokenizer."""
    attention.set_backend("sdpa")
    model, tokenizer, _ = load_model(trained_run)
    engine = Engine(model, tokenizer)
    assistant_start = tokenizer.encode_special("<|assistant_start|>")

    def replies(*messages: str) -> list[str]:
        history, texts = [], []
        for message in messages:
            history.append({"role": "user", "content": message})
            prompt = tokenizer.render_conversation({"messages": history})[0] + [assistant_start]
            answer = []
            for column, _ in engine.generate(prompt, max_tokens=8, temperature=0.0):
                if column[0] in engine.stop_tokens:
                    break
                answer.append(column[0])
            texts.append(tokenizer.decode(answer))
            history.append({"role": "assistant", "content": texts[-1]})
        return texts

    return replies


def test_single_prompt_prints_the_reply(trained_run, expected_replies):
    result = chat(trained_run, "-p", "hello", *GREEDY)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_replies("hello")[0] + "\n"
    assert result.stdout.strip()


def test_conversation_on_stdin_keeps_history_until_cleared(trained_run, expected_replies):
    result = chat(trained_run, *GREEDY, stdin="hello\nhow are you\nclear\nhow are you\nquit\nnever read\n")
    assert result.returncode == 0, result.stderr
    first, second = expected_replies("hello", "how are you")
    fresh = expected_replies("how are you")[0]
    turns = result.stdout.split("model> ")[1:]
    assert len(turns) == 3
    assert turns[0].startswith(first + "\n") and turns[1].startswith(second + "\n")
    assert "history cleared" in turns[1] and turns[2].startswith(fresh + "\n")


@pytest.mark.parametrize("args, message", [
    (["{missing}", "-p", "hi"], "holds no checkpoint"),
    (["{run}", "-p", "   "], "the prompt is empty"),
    (["{run}", "-p", "word " * 200], "context is 64"),
    (["{run}", "-p", "hi", "--device", "tpu"], "device='tpu'"),
])
def test_bad_input_is_one_line_and_exit_2(trained_run, tmp_path, args, message):
    filled = [a.format(run=trained_run, missing=tmp_path / "missing") for a in args]
    result = chat(*filled)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and result.stderr.startswith("llm.chat: error:")
    assert result.stdout == ""


def test_history_is_rendered_in_the_chat_format():
    tokenizer = byte_tokenizer()
    special = tokenizer.encode_special
    user_start, user_end = special("<|user_start|>"), special("<|user_end|>")
    assistant_start, assistant_end = special("<|assistant_start|>"), special("<|assistant_end|>")
    engine = RecordingEngine(ScriptedModel([[*b"ok", assistant_end]], 0), tokenizer)
    out = io.StringIO()
    conversation = Conversation(engine, dict(max_tokens=8, temperature=0.0))
    conversation.reply("hi", out)
    conversation.sampling["max_tokens"] = 2  # cut before <|assistant_end|>: the history must still close the turn
    conversation.reply("more", out)
    conversation.clear()
    conversation.reply("new", out)
    assert out.getvalue() == "ok\nok\nok\n"
    first = [tokenizer.bos_id, user_start, *b"hi", user_end, assistant_start]
    second = [*first, *b"ok", assistant_end, user_start, *b"more", user_end, assistant_start]
    fresh = [tokenizer.bos_id, user_start, *b"new", user_end, assistant_start]
    assert engine.prompts == [first, second, fresh]
    assert conversation.tokens == [*fresh, *b"ok", assistant_end]
    turns_before = conversation.tokens
    with pytest.raises(ChatError, match="context is 128"):
        conversation.reply("x" * 200, out)
    assert conversation.tokens == turns_before  # a turn that does not fit leaves the history alone


def test_an_answer_stopped_by_bos_is_closed_with_assistant_end_in_the_history():
    tokenizer = byte_tokenizer()
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    engine = RecordingEngine(ScriptedModel([[*b"ok", tokenizer.bos_id]], 0), tokenizer)
    conversation = Conversation(engine, dict(max_tokens=8, temperature=0.0))
    conversation.reply("hi", io.StringIO())
    assert conversation.tokens[-3:] == [*b"ok", assistant_end]
    assert conversation.tokens.count(tokenizer.bos_id) == 1  # only the one that opens the conversation


def test_tool_calls_are_shown_readably_and_kept_as_parts_for_the_next_turn():
    tokenizer = byte_tokenizer()
    special = tokenizer.encode_special
    call = [special("<|python_start|>"), *b"6*7", special("<|python_end|>"), None, None, None, None]
    engine = RecordingEngine(ScriptedModel([[*b"it is ", *call, *b" so 42", special("<|assistant_end|>")]], 0),
                             tokenizer)
    out = io.StringIO()
    conversation = Conversation(engine, dict(max_tokens=32, temperature=0.0))
    conversation.reply("6 times 7?", out)
    assert out.getvalue() == "it is [python: 6*7][output: 42] so 42\n"
    reply = [{"type": "text", "text": "it is "}, {"type": "python", "text": "6*7"},
             {"type": "python_output", "text": "42"}, {"type": "text", "text": " so 42"}]
    assert conversation.messages == [{"role": "user", "content": "6 times 7?"}, {"role": "assistant", "content": reply}]
    conversation.reply("thanks", out)
    history = {"messages": [*conversation.messages[:2], {"role": "user", "content": "thanks"},
                            {"role": "assistant", "content": ""}]}
    assert engine.prompts[1] == tokenizer.render_for_completion(history)
    # The tool's output is in the second prompt between its delimiters, as the engine forced it.
    assert bytes(t for t in engine.prompts[1] if t < 256).startswith(b"6 times 7?it is 6*742 so 42")
