"""ARC (allenai/ai2_arc), Easy and Challenge: grade-school science questions with 3-5 lettered
choices. Real data only, from the Hub; offline, `llm.tasks.wordnet_choice` stands in under its own
name (it is not ARC).
"""

from llm.tasks.base import Conversation, MultipleChoice, TaskError, choice_conversation
from llm.tasks.sources import HUB_ENDPOINT, HubSplit, hub_rows

SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}


class ARC(MultipleChoice):
    def __init__(self, subset: str, split: str, base: str | None = None, endpoint: str = HUB_ENDPOINT, **view):
        super().__init__(**view)
        if subset not in SUBSETS or split not in ("train", "validation", "test"):
            raise TaskError(f"ARC needs subset ARC-Easy|ARC-Challenge and split train|validation|test, "
                            f"got {subset}/{split}")
        self.name = SUBSETS[subset]
        self.trainable = split == "train"
        self.rows = hub_rows(HubSplit("allenai/ai2_arc", subset, split), base, endpoint)

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        letters, choices = row["choices"]["label"], row["choices"]["text"]
        if row["answerKey"] not in letters:
            raise TaskError(f"{self.name} row {index}: answer {row['answerKey']!r} is not one of {letters}")
        return choice_conversation(row["question"], letters, choices, row["answerKey"])
