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
from tests.engine_fakes import ScriptedModel, byte_tokenizer

GREEDY = ["--max-tokens", "8", "--temperature", "0", "--device", "cpu"]


def chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm.chat", *map(str, args)], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "2"})


@pytest.fixture(scope="module")
def expected_replies(trained_run):
    """Greedy replies computed here, from the chat format rendered independently of llm.chat."""
    attention.set_backend("sdpa")
    model, tokenizer, _ = load_model(trained_run)
    engine = Engine(model, tokenizer)
    special = tokenizer.encode_special
    assistant_end = special("<|assistant_end|>")

    def replies(*messages: str) -> list[str]:
        history, texts = [tokenizer.bos_id], []
        for message in messages:
            history += [special("<|user_start|>"), *tokenizer.encode(message), special("<|user_end|>"),
                        special("<|assistant_start|>")]
            answer = []
            for column, _ in engine.generate(history, max_tokens=8, temperature=0.0):
                answer.append(column[0])
                if column[0] in engine.stop_tokens:
                    break
            texts.append(tokenizer.decode([t for t in answer if t not in engine.stop_tokens]))
            history += answer if answer and answer[-1] == assistant_end else [*answer, assistant_end]
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


class RecordingEngine(Engine):
    """Keeps every prompt it is given; the scripted model answers "ok" after each of them."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.prompts = []

    def generate(self, tokens, *args, **kwargs):
        self.prompts.append(list(tokens))
        self.model.prompt_len = len(tokens)
        return super().generate(tokens, *args, **kwargs)


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
