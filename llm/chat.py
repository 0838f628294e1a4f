"""Chat with a trained model in the terminal.

    python -m llm.chat DIR                    a conversation (type 'clear' to restart, 'quit' to leave)
    python -m llm.chat DIR -p "Why is the sky blue?"   one answer, then exit

DIR is a run directory (its newest checkpoint) or a checkpoints/step_N directory. A conversation is
rendered as the chat fine-tuning format renders it:

    <|bos|> <|user_start|> … <|user_end|> <|assistant_start|> … <|assistant_end|> <|user_start|> …

and the whole history is the prompt of each new reply, so it must fit the model's context.
"""

import argparse
import sys

from llm.cli import exit_on
from llm.config.derived import ConfigError
from llm.inference.engine import Engine
from llm.model import attention
from llm.train import runtime as runtimes
from llm.train.checkpoint import CheckpointError
from llm.train.load import load_model


class ChatError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class Conversation:
    """The token history of one chat and the replies streamed into it."""

    def __init__(self, engine: Engine, sampling: dict):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.sampling = sampling
        self.special = self.tokenizer.encode_special
        self.clear()

    def clear(self) -> None:
        self.tokens = [self.tokenizer.bos_id]

    def reply(self, message: str, out) -> None:
        """Add a user turn, stream the assistant's answer to `out`, and keep both in the history.

        A turn that does not fit the context raises ChatError and leaves the history unchanged.
        """
        prompt = [*self.tokens, self.special("<|user_start|>"), *self.tokenizer.encode(message),
                  self.special("<|user_end|>"), self.special("<|assistant_start|>")]
        try:
            stream = self.engine.generate(prompt, num_samples=1, **self.sampling)
        except ValueError as error:
            raise ChatError(str(error))
        answer, shown = [], ""
        for column, _ in stream:
            answer.append(column[0])
            if column[0] in self.engine.stop_tokens:
                break
            text = self.tokenizer.decode(answer)
            # A token may end inside a multi-byte character; hold it back until the rest arrives.
            if not text.endswith("\ufffd"):
                out.write(text[len(shown):])
                out.flush()
                shown = text
        text = self.tokenizer.decode([t for t in answer if t not in self.engine.stop_tokens])
        out.write(text[len(shown):] + "\n")
        # The history keeps every answer closed by <|assistant_end|>: in place of another stop token
        # (such as <|bos|>), or after the last token of an answer that ran out of room.
        if answer and answer[-1] in self.engine.stop_tokens:
            answer.pop()
        answer.append(self.special("<|assistant_end|>"))
        self.tokens = prompt + answer


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
