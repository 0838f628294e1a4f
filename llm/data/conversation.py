"""The chat format: what a conversation is, how its turns are laid out, and which tokens are trained on.

A conversation is a dict `{"messages": [message, ...]}`, each message `{"role": ..., "content": ...}`:

- an optional first message with role "system", whose text is put before the first user message's
  text with a blank line between (the model has no system turn of its own);
- then messages from "user" and "assistant" strictly alternating, starting with user, ending with
  either;
- user and system content is a string; assistant content is a string or a list of parts
  `{"type": "text" | "python" | "python_output", "text": str}`: text the assistant writes, a
  calculator call it writes, and the calculator's answer that the engine inserts.

A rendering is <|bos|> (added by the tokenizer, which opens every document with it) followed by
each turn between its start and end tokens; a python part sits between <|python_start|> and
<|python_end|>, a python_output part between <|output_start|> and <|output_end|>. Fine-tuning
trains only on what the assistant produces: its text, its calculator calls with their delimiters,
and <|assistant_end|> (so it learns to stop). User text, <|assistant_start|> (always given as the
prompt) and tool outputs, which come from Python at inference time, are not supervised.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from llm.data.tokenizer import Tokenizer

USER_START, USER_END = "<|user_start|>", "<|user_end|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant_start|>", "<|assistant_end|>"
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"
CHAT_TOKENS = [USER_START, USER_END, ASSISTANT_START, ASSISTANT_END, PYTHON_START, PYTHON_END, OUTPUT_START,
               OUTPUT_END]

ROLES = ("system", "user", "assistant")
# Each assistant part type: the special tokens around its text (if any), and whether it is trained on.
PART_FORMATS = {
    "text": (None, True),
    "python": ((PYTHON_START, PYTHON_END), True),
    "python_output": ((OUTPUT_START, OUTPUT_END), False),
}
SYSTEM_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Segment:
    """One stretch of a rendering: a special token (by name) or a text to encode, and whether it is supervised."""

    text: str
    special: bool
    supervised: bool


def _messages(conversation) -> list:
    """The message list, each message checked to be a dict with a known role and some content."""
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise ValueError(f'a conversation is a dict {{"messages": [...]}}, got {_short(conversation)}')
    messages = conversation["messages"]
    if not messages:
        raise ValueError("the conversation has no messages; give at least one user message")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index}: a message is a dict with 'role' and 'content', got {_short(message)}")
        if message["role"] not in ROLES:
            raise ValueError(f"message {index}: unknown role {message['role']!r}; use one of {', '.join(ROLES)}")
    return messages


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _assistant_segments(content, index: int) -> list[Segment]:
    """<|assistant_start|>, the parts (a string is one text part), <|assistant_end|>."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError(f"message {index}: assistant content must be a string or a list of parts, "
                         f"got {type(content).__name__}")
    segments = [Segment(ASSISTANT_START, special=True, supervised=False)]
    for number, part in enumerate(content):
        where = f"message {index}, part {number}"
        if not isinstance(part, dict) or "type" not in part or "text" not in part:
            raise ValueError(f"{where}: a part is a dict with 'type' and 'text', got {_short(part)}")
        if part["type"] not in PART_FORMATS:
            raise ValueError(f"{where}: unknown part type {part['type']!r}; use one of {', '.join(PART_FORMATS)}")
        wrapper, supervised = PART_FORMATS[part["type"]]
        text = Segment(_text(part["text"], f"{where}: the text"), special=False, supervised=supervised)
        if wrapper is None:
            segments.append(text)
        else:
            segments += [Segment(wrapper[0], True, supervised), text, Segment(wrapper[1], True, supervised)]
    segments.append(Segment(ASSISTANT_END, special=True, supervised=True))
    return segments


def conversation_segments(conversation) -> list[Segment]:
    """The rendering of a conversation after <|bos|>, as segments; a malformed one raises ValueError."""
    messages = _messages(conversation)
    system = ""
    first = 0
    if messages[0]["role"] == "system":
        system = _text(messages[0]["content"], "message 0: system content") + SYSTEM_SEPARATOR
        first = 1
        if len(messages) == 1:
            raise ValueError("message 0: a system message must be followed by a user message")
    segments = []
    for index in range(first, len(messages)):
        role = messages[index]["role"]
        expected = "user" if (index - first) % 2 == 0 else "assistant"
        if role != expected:
            rule = ("a system message may only come first" if role == "system" else
                    "user and assistant messages alternate, starting with user")
            raise ValueError(f"message {index} is from {role} but should be from {expected} ({rule})")
        content = messages[index]["content"]
        if role == "user":
            text = _text(content, f"message {index}: user content")
            if index == first:
                text = system + text
            segments += [Segment(USER_START, True, False), Segment(text, False, False), Segment(USER_END, True, False)]
        else:
            segments += _assistant_segments(content, index)
    return segments


def without_last_reply(conversation) -> dict:
    """The conversation up to its final assistant message, which must exist (the prompt for a completion)."""
    conversation_segments(conversation)  # refuses a malformed conversation, naming the message
    messages = conversation["messages"]
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"message {len(messages) - 1} is from {messages[-1]['role']}, but a completion prompt "
                         "drops the final assistant message: end the conversation with one")
    return {**conversation, "messages": messages[:-1]}


GREEN, RED, GREY, RESET = "\033[92m", "\033[91m", "\033[90m", "\033[0m"


def show_rendering(tokenizer: "Tokenizer", ids: Sequence[int], mask: Sequence[int], colour: bool = True,
                   with_ids: bool = False) -> str:
    """The tokens of a rendering joined by '|', supervised ones green and others red (or, without
    colour, supervised ones in [brackets]); `with_ids` adds each token's id in parentheses."""
    if len(ids) != len(mask):
        raise ValueError(f"ids and mask differ in length ({len(ids)} and {len(mask)}); pass one rendering's pair")
    pieces = []
    for token, supervised in zip(ids, mask):
        text = tokenizer.decode([token])
        if colour:
            text = f"{GREEN if supervised else RED}{text}{RESET}"
        elif supervised:
            text = f"[{text}]"
        if with_ids:
            text += f"{GREY}({token}){RESET}" if colour else f"({token})"
        pieces.append(text)
    return "|".join(pieces)
