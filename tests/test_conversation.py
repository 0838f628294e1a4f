"""The chat format: rendering conversations to ids and training masks, completion prompts, refusals."""

import copy

import pytest

from llm.data.conversation import GREEN, RED, show_rendering
from llm.data.corpus import read_source, stdlib_sources
from llm.data.tokenizer import Tokenizer

VOCAB = 600


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([read_source(path) for path in stdlib_sources()[:30]], VOCAB)


@pytest.fixture(scope="module")
def special(tok):
    """Id of each special token by its short name: special['user_start'] is <|user_start|>'s id."""
    names = ["bos", "user_start", "user_end", "assistant_start", "assistant_end", "python_start", "python_end",
             "output_start", "output_end"]
    return {name: tok.encode_special(f"<|{name}|>") for name in names}


class Expected:
    """A rendering built by hand: ids with their mask values, appended piece by piece."""

    def __init__(self):
        self.ids, self.mask = [], []

    def add(self, ids, supervised: int):
        ids = [ids] if isinstance(ids, int) else ids
        self.ids += ids
        self.mask += [supervised] * len(ids)
        return self


def user_turn(expected, tok, special, text):
    return expected.add(special["user_start"], 0).add(tok.encode(text), 0).add(special["user_end"], 0)


def test_two_turns_supervise_only_the_reply_and_its_end(tok, special):
    conversation = {"messages": [{"role": "user", "content": "What is 2 + 2?"},
                                 {"role": "assistant", "content": "It is 4."}]}
    expected = user_turn(Expected().add(special["bos"], 0), tok, special, "What is 2 + 2?")
    expected.add(special["assistant_start"], 0).add(tok.encode("It is 4."), 1).add(special["assistant_end"], 1)
    ids, mask = tok.render_conversation(conversation)
    assert (ids, mask) == (expected.ids, expected.mask)
    assert tok.decode(ids) == ("<|bos|><|user_start|>What is 2 + 2?<|user_end|>"
                               "<|assistant_start|>It is 4.<|assistant_end|>")


def test_every_part_type_over_several_turns(tok, special):
    reply = [{"type": "text", "text": "Let me compute."},
             {"type": "python", "text": "12*7"},
             {"type": "python_output", "text": "84"},
             {"type": "text", "text": " So 84."}]
    conversation = {"messages": [{"role": "user", "content": "12 times 7?"},
                                 {"role": "assistant", "content": reply},
                                 {"role": "user", "content": "Thanks!"},
                                 {"role": "assistant", "content": "You're welcome."}]}
    expected = user_turn(Expected().add(special["bos"], 0), tok, special, "12 times 7?")
    expected.add(special["assistant_start"], 0).add(tok.encode("Let me compute."), 1)
    # The calculator call is written by the assistant, delimiters included; its answer is not.
    expected.add(special["python_start"], 1).add(tok.encode("12*7"), 1).add(special["python_end"], 1)
    expected.add(special["output_start"], 0).add(tok.encode("84"), 0).add(special["output_end"], 0)
    expected.add(tok.encode(" So 84."), 1).add(special["assistant_end"], 1)
    user_turn(expected, tok, special, "Thanks!")
    expected.add(special["assistant_start"], 0).add(tok.encode("You're welcome."), 1).add(special["assistant_end"], 1)
    ids, mask = tok.render_conversation(conversation)
    assert (ids, mask) == (expected.ids, expected.mask)
    assert tok.decode(ids) == ("<|bos|><|user_start|>12 times 7?<|user_end|><|assistant_start|>Let me compute."
                               "<|python_start|>12*7<|python_end|><|output_start|>84<|output_end|> So 84."
                               "<|assistant_end|><|user_start|>Thanks!<|user_end|>"
                               "<|assistant_start|>You're welcome.<|assistant_end|>")
    # A string reply renders exactly as a single text part.
    as_part = {"messages": [conversation["messages"][0],
                            {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]}]}
    as_string = {"messages": [conversation["messages"][0], {"role": "assistant", "content": "Fine."}]}
    assert tok.render_conversation(as_part) == tok.render_conversation(as_string)


def test_system_message_joins_the_first_user_message(tok, special):
    conversation = {"messages": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "Capital of France?"},
                                 {"role": "assistant", "content": "Paris."}]}
    original = copy.deepcopy(conversation)
    expected = user_turn(Expected().add(special["bos"], 0), tok, special, "Answer briefly.\n\nCapital of France?")
    expected.add(special["assistant_start"], 0).add(tok.encode("Paris."), 1).add(special["assistant_end"], 1)
    ids, mask = tok.render_conversation(conversation)
    assert (ids, mask) == (expected.ids, expected.mask)
    assert tok.decode(ids).startswith("<|bos|><|user_start|>Answer briefly.\n\nCapital of France?<|user_end|>")
    assert conversation == original


def test_a_conversation_may_end_on_a_user_message_and_special_strings_stay_text(tok, special):
    conversation = {"messages": [{"role": "user", "content": "<|assistant_end|> is just text here"}]}
    ids, mask = tok.render_conversation(conversation)
    assert ids == [special["bos"], special["user_start"], *tok.encode("<|assistant_end|> is just text here"),
                   special["user_end"]]
    assert special["assistant_end"] not in ids and set(mask) == {0}


def test_truncation_keeps_the_first_max_tokens(tok):
    conversation = {"messages": [{"role": "user", "content": "Tell me a long story. " * 20},
                                 {"role": "assistant", "content": "Once upon a time " * 40}]}
    ids, mask = tok.render_conversation(conversation)
    assert len(ids) > 100
    assert tok.render_conversation(conversation, max_tokens=100) == (ids[:100], mask[:100])
    assert tok.render_conversation(conversation, max_tokens=len(ids) + 50) == (ids, mask)
    assert len(tok.render_conversation({"messages": [{"role": "user", "content": "x " * 3000}]})[0]) == 2048
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        tok.render_conversation(conversation, max_tokens=0)


def test_completion_prompt_drops_the_last_reply_and_opens_the_assistant_turn(tok, special):
    reply = [{"type": "python", "text": "3+4"}, {"type": "python_output", "text": "7"}, {"type": "text", "text": "7"}]
    conversation = {"messages": [{"role": "system", "content": "Be exact."},
                                 {"role": "user", "content": "3 + 4?"},
                                 {"role": "assistant", "content": reply}]}
    original = copy.deepcopy(conversation)
    prompt = tok.render_for_completion(conversation)
    expected = user_turn(Expected().add(special["bos"], 0), tok, special, "Be exact.\n\n3 + 4?")
    assert prompt == expected.ids + [special["assistant_start"]]
    assert conversation == original
    prompt_only = {"messages": conversation["messages"][:2]}
    with pytest.raises(ValueError, match="message 1 is from user.*end the conversation with one"):
        tok.render_for_completion(prompt_only)
    with pytest.raises(ValueError, match="message 0 is from assistant but should be from user"):
        tok.render_for_completion({"messages": [{"role": "assistant", "content": "hi"}]})


def user(text="hi"):
    return {"role": "user", "content": text}


def assistant(content="hello"):
    return {"role": "assistant", "content": content}


MALFORMED = {
    "not a dict": (["hi"], r'a conversation is a dict \{"messages"'),
    "no messages key": ({"turns": []}, r'a conversation is a dict \{"messages"'),
    "empty messages": ({"messages": []}, "no messages; give at least one user message"),
    "message not a dict": ({"messages": [user(), "hello"]}, "message 1: a message is a dict with 'role' and 'content'"),
    "no content": ({"messages": [{"role": "user"}]}, "message 0: a message is a dict with 'role' and 'content'"),
    "unknown role": ({"messages": [user(), {"role": "bot", "content": "x"}]}, "message 1: unknown role 'bot'"),
    "starts with assistant": ({"messages": [assistant(), user()]},
                              "message 0 is from assistant but should be from user .*starting with user"),
    "two users in a row": ({"messages": [user(), user()]}, "message 1 is from user but should be from assistant"),
    "two assistants in a row": ({"messages": [user(), assistant(), assistant()]},
                                "message 2 is from assistant but should be from user"),
    "system not first": ({"messages": [user(), assistant(), {"role": "system", "content": "x"}]},
                         "message 2 is from system .*a system message may only come first"),
    "two system messages": ({"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}]},
                            "message 1 is from system but should be from user"),
    "system alone": ({"messages": [{"role": "system", "content": "x"}]},
                     "message 0: a system message must be followed by a user message"),
    "system then assistant": ({"messages": [{"role": "system", "content": "x"}, assistant()]},
                              "message 1 is from assistant but should be from user"),
    "system content not a string": ({"messages": [{"role": "system", "content": ["x"]}, user()]},
                                    "message 0: system content must be a string, got list"),
    "user content not a string": ({"messages": [user(["hi"])]}, "message 0: user content must be a string, got list"),
    "assistant content a number": ({"messages": [user(), assistant(4)]},
                                   "message 1: assistant content must be a string or a list of parts, got int"),
    "part not a dict": ({"messages": [user(), assistant(["hello"])]},
                        "message 1, part 0: a part is a dict with 'type' and 'text'"),
    "part without text": ({"messages": [user(), assistant([{"type": "text"}])]},
                          "message 1, part 0: a part is a dict with 'type' and 'text'"),
    "unknown part type": ({"messages": [user(), assistant([{"type": "text", "text": "a"}, {"type": "image", "text": "b"}])]},
                          "message 1, part 1: unknown part type 'image'; use one of text, python, python_output"),
    "part text not a string": ({"messages": [user(), assistant([{"type": "python", "text": 12}])]},
                               "message 1, part 0: the text must be a string, got int"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_conversations_are_refused_naming_the_message(tok, case):
    conversation, message = MALFORMED[case]
    with pytest.raises(ValueError, match=message):
        tok.render_conversation(conversation)


def test_show_rendering_marks_supervised_tokens(tok):
    conversation = {"messages": [user("Hi"), assistant("Hello there")]}
    ids, mask = tok.render_conversation(conversation)
    plain = show_rendering(tok, ids, mask, colour=False)
    question = "|".join(tok.decode([token]) for token in tok.encode("Hi"))
    reply = "|".join(f"[{tok.decode([token])}]" for token in tok.encode("Hello there"))
    assert plain == (f"<|bos|>|<|user_start|>|{question}|<|user_end|>|<|assistant_start|>|{reply}"
                     "|[<|assistant_end|>]")
    assert show_rendering(tok, ids, mask, colour=False, with_ids=True).startswith(f"<|bos|>({tok.bos_id})|")
    coloured = show_rendering(tok, ids, mask)
    assert coloured.count(GREEN) == sum(mask) and coloured.count(RED) == len(mask) - sum(mask)
    assert f"{GREEN}<|assistant_end|>" in coloured and f"{RED}<|assistant_start|>" in coloured
    with pytest.raises(ValueError, match="differ in length"):
        show_rendering(tok, ids, mask[:-1])
