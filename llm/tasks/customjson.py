"""Conversations from a JSONL file: each line a JSON array of messages, user and assistant
alternating, user first, string contents. A malformed file is refused, naming its line.
"""

import json
from pathlib import Path

from llm.tasks.base import Conversation, Task, TaskError, message_problem


def read_conversations(path: Path) -> list[list[dict]]:
    if not path.exists():
        raise TaskError(f"no conversations file at {path}; write it (python -m llm.tasks.identity {path}) "
                        f"or point the task at another file")
    conversations = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskError(f"{path}:{number}: not valid JSON ({error.msg}); fix or remove that line") from None
            problem = message_problem(messages, allow_system=False)
            if problem:
                raise TaskError(f"{path}:{number}: {problem}; fix or remove that line")
            conversations.append(messages)
    return conversations


class CustomJSON(Task):
    def __init__(self, filepath: str | Path, name: str | None = None, **view):
        super().__init__(**view)
        self.path = Path(filepath)
        self.name = name or self.path.stem
        self.conversations = read_conversations(self.path)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> Conversation:
        return {"messages": self.conversations[index]}
