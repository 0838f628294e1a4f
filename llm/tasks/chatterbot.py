"""`chatterbot`: short English dialogues from the chatterbot-corpus package (BSD), the offline
stand-in for SmolTalk. 2,026 conversations in 21 topic files; it is not SmolTalk and is never
reported as such.

The conversations are taken in file order, shuffled once with a fixed seed, and every 20th goes
to the test split (about 100 conversations) so that train and test never share a row.
"""

import numpy as np
import yaml

from llm.tasks.base import Conversation, Task
from llm.tasks.sources import package_file

REQUIREMENT = "chatterbot-corpus==1.3.3"
TEST_EVERY = 20


def load_dialogues() -> list[list[str]]:
    """Every English dialogue as a list of turns, user first, ending on an answer."""
    directory = package_file("chatterbot_corpus", "data/english", REQUIREMENT)
    dialogues = []
    for path in sorted(directory.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = [str(turn).strip() for turn in turns]
            turns = turns[:len(turns) // 2 * 2]  # a question left without an answer is dropped
            if turns and all(turns):
                dialogues.append(turns)
    return dialogues


class Chatterbot(Task):
    name = "chatterbot"

    def __init__(self, split: str, **view):
        super().__init__(**view)
        self.use_split(split)
        dialogues = load_dialogues()
        shuffled = [dialogues[i] for i in np.random.default_rng(42).permutation(len(dialogues))]
        in_test = split == "test"
        self.dialogues = [turns for number, turns in enumerate(shuffled) if (number % TEST_EVERY == 0) == in_test]

    def num_examples(self) -> int:
        return len(self.dialogues)

    def get_example(self, index: int) -> Conversation:
        turns = self.dialogues[index]
        roles = ("user", "assistant")
        return {"messages": [{"role": roles[number % 2], "content": text} for number, text in enumerate(turns)]}
