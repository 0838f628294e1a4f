"""A reply's tokens turned into text while they stream, part by part of the chat format.

A reply is text, calculator calls (between <|python_start|> and <|python_end|>) and the calculator's
answers (between <|output_start|> and <|output_end|>). `ReplyText` takes the tokens one at a time
and gives back the new text as `Piece`s labelled with the part they belong to; a piece that opens a
part carries no text. At the end it holds the reply as the format's parts, which render back into
the same tokens in the next turn's prompt.

`readable` shows the pieces as one string, a call as [python: expression] and its answer as
[output: result]: how the terminal chat and the OpenAI-style API show tool use.
"""

from typing import NamedTuple

from llm.data.conversation import OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START

# What opening each part looks like in readable text: back to text closes a tool part.
OPENINGS = {"python": "[python: ", "python_output": "[output: ", "text": "]"}


class Piece(NamedTuple):
    kind: str  # "text", "python" or "python_output"
    text: str
    opens: bool  # the start of a new part (text is then empty)


def readable(pieces: list[Piece]) -> str:
    return "".join(OPENINGS[piece.kind] if piece.opens else piece.text for piece in pieces)


class ReplyText:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        special = tokenizer.encode_special
        # Each delimiter token: the kind of part that follows it.
        self.delimiters = {special(PYTHON_START): "python", special(PYTHON_END): "text",
                           special(OUTPUT_START): "python_output", special(OUTPUT_END): "text"}
        self.parts: list[dict] = []  # the finished parts, {"type": kind, "text": text}
        self.kind, self._ids, self._shown = "text", [], ""

    def add(self, token: int) -> list[Piece]:
        """The text this token adds: none while it ends inside a multi-byte character."""
        if token in self.delimiters:
            pieces = self._end_part()
            self.kind = self.delimiters[token]
            return [*pieces, Piece(self.kind, "", opens=True)]
        self._ids.append(token)
        text = self.tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):  # hold it back until the rest of the character arrives
            return []
        new, self._shown = text[len(self._shown):], text
        return [Piece(self.kind, new, opens=False)] if new else []

    def finish(self) -> list[Piece]:
        """Whatever text was held back; `parts` is complete afterwards (a reply cut short keeps what it has)."""
        return self._end_part()

    def _end_part(self) -> list[Piece]:
        text = self.tokenizer.decode(self._ids)
        rest = text[len(self._shown):]
        if text:
            self.parts.append({"type": self.kind, "text": text})
        self._ids, self._shown = [], ""
        return [Piece(self.kind, rest, opens=False)] if rest else []
