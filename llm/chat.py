"""Chat with a trained model in the terminal.

    python -m llm.chat DIR                    a conversation (type 'clear' to restart, 'quit' to leave)
    python -m llm.chat DIR -p "Why is the sky blue?"   one answer, then exit

DIR is a run directory (its newest checkpoint) or a checkpoints/step_N directory. The chat is kept
as a conversation of the chat format (llm/data/conversation.py), and each new reply is prompted by
the whole history rendered as fine-tuning renders it, then <|assistant_start|>:

    <|bos|> <|user_start|> … <|user_end|> <|assistant_start|> … <|assistant_end|> <|user_start|> …

so the history must fit the model's context. A calculator call the model writes is shown as
[python: expression] and the engine's answer as [output: result]; the reply is kept as parts
(text, python, python_output), so the next prompt renders it as training rendered such replies.
"""

import argparse
import sys

from llm.cli import exit_on
from llm.config.derived import ConfigError
from llm.data.conversation import ASSISTANT_START
from llm.inference.engine import Engine
from llm.inference.reply_text import ReplyText, readable
from llm.model import attention
from llm.train import runtime as runtimes
from llm.train.checkpoint import CheckpointError
from llm.train.load import load_model


class ChatError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class Reply:
    """One assistant reply as it streams: shown readably on `out` and kept as the format's parts."""

    def __init__(self, tokenizer, out):
        self.text, self.out = ReplyText(tokenizer), out

    def add(self, token: int) -> None:
        self._write(readable(self.text.add(token)))

    def finish(self) -> list[dict]:
        """The reply's parts (a reply cut short keeps what it has), after ending the line on `out`."""
        self._write(readable(self.text.finish()) + "\n")
        return self.text.parts

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class Conversation:
    """The messages of one chat and the replies streamed into it."""

    def __init__(self, engine: Engine, sampling: dict):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.sampling = sampling
        self.clear()

    def clear(self) -> None:
        self.messages: list[dict] = []

    @property
    def tokens(self) -> list[int]:
        """The conversation so far as the model reads it."""
        return self._rendered(self.messages)

    def _rendered(self, messages: list[dict]) -> list[int]:
        # Uncut (render_for_completion cuts at 2048 tokens): the engine refuses what is past the context.
        if not messages:
            return [self.tokenizer.bos_id]
        return self.tokenizer.render_conversation({"messages": messages}, max_tokens=sys.maxsize)[0]

    def reply(self, message: str, out) -> None:
        """Add a user turn, stream the assistant's answer to `out`, and keep both in the history.

        A turn that does not fit the context raises ChatError and leaves the history unchanged.
        """
        asked = [*self.messages, {"role": "user", "content": message}]
        prompt = [*self._rendered(asked), self.tokenizer.encode_special(ASSISTANT_START)]
        try:
            stream = self.engine.generate(prompt, num_samples=1, **self.sampling)
        except ValueError as error:
            raise ChatError(str(error))
        reply = Reply(self.tokenizer, out)
        for column, _ in stream:
            if column[0] in self.engine.stop_tokens:
                break
            reply.add(column[0])
        # Rendering closes the reply with <|assistant_end|>, whether it stopped on it, on <|bos|>
        # or ran out of room.
        self.messages = [*asked, {"role": "assistant", "content": reply.finish()}]


def interactive(conversation: Conversation) -> None:
    print("Chat: 'clear' starts a new conversation, 'quit' or 'exit' leaves.")
    while True:
        try:
            message = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if message.lower() in ("quit", "exit"):
            return
        if message.lower() == "clear":
            conversation.clear()
            print("(history cleared: a new conversation starts)")
            continue
        if not message:
            continue
        print("\nmodel> ", end="", flush=True)
        try:
            conversation.reply(message, sys.stdout)
        except ChatError as error:
            print(f"\nerror: {error}; type 'clear' to start a new conversation", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="run directory or checkpoints/step_N directory")
    parser.add_argument("-p", "--prompt", help="answer this one message and exit")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 picks the most likely token")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens")
    parser.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args(argv)
    with exit_on(ChatError, ConfigError, CheckpointError, FileNotFoundError, ValueError, prog="llm.chat"):
        if args.prompt is not None and not args.prompt.strip():
            raise ChatError("the prompt is empty: pass some text with -p, or omit -p to chat interactively")
        if args.temperature < 0 or args.max_tokens < 1:
            raise ChatError("--temperature must be >= 0 and --max-tokens >= 1")
        runtime = runtimes.start(args.device, "auto", args.seed)
        # On a CPU FA3 cannot load; asking for SDPA directly avoids a fallback warning.
        attention.set_backend("auto" if runtime.device.type == "cuda" else "sdpa")
        model, tokenizer, _ = load_model(args.path, runtime.device)
        sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        conversation = Conversation(Engine(model, tokenizer), sampling)
        with runtime.autocast():
            if args.prompt is None:
                interactive(conversation)
            else:
                conversation.reply(args.prompt.strip(), sys.stdout)


if __name__ == "__main__":
    main()
