"""GSM8K (openai/gsm8k): grade-school word problems, train 7,473 and test 1,319 rows.

A solution marks each calculation as `<<expression=result>>`; in the conversation these become
a calculator call (a `python` part holding the expression) followed by its `python_output` part,
so the model learns to use the tool. The final answer follows `#### `, and a completion is right
when its `#### ` number equals the reference's (commas removed, as in OpenAI's grader). Real data
only, from the Hub; offline, `llm.tasks.gsm_symbolic` stands in under its own name.
"""

import re

from llm.tasks.base import Conversation, Task, TaskError
from llm.tasks.sources import HUB_ENDPOINT, HubSplit, hub_rows

ANSWER = re.compile(r"#### (-?[0-9.,]+)")
CALCULATION = re.compile(r"(<<[^>]+>>)")


def extract_answer(text: str) -> str | None:
    """The number after the first `#### `, without thousands separators, or None."""
    match = ANSWER.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def solution_parts(solution: str) -> list[dict[str, str]]:
    """A GSM8K solution as assistant parts: text, and a python/python_output pair per `<<e=r>>`."""
    parts = []
    for piece in CALCULATION.split(solution):
        if CALCULATION.fullmatch(piece):
            expression, _, result = piece[2:-2].rpartition("=")
            if not expression:  # no '=': the whole inside is the expression, with no result
                expression, result = result, ""
            parts += [{"type": "python", "text": expression}, {"type": "python_output", "text": result}]
        else:
            parts.append({"type": "text", "text": piece})
    return parts


def final_answer_score(conversation: Conversation, completion: str) -> int:
    """1 when the completion's `#### ` answer equals the one in the reference's last text part."""
    reference = conversation["messages"][-1]["content"][-1]["text"]
    return int(extract_answer(completion) == extract_answer(reference))


class GSM8K(Task):
    name = "gsm8k"

    def __init__(self, subset: str, split: str, base: str | None = None, endpoint: str = HUB_ENDPOINT, **view):
        super().__init__(**view)
        if subset not in ("main", "socratic") or split not in ("train", "test"):
            raise TaskError(f"GSM8K needs subset main|socratic and split train|test, got {subset}/{split}")
        self.trainable = split == "train"
        self.rows = hub_rows(HubSplit("openai/gsm8k", subset, split), base, endpoint)

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": solution_parts(row["answer"])}]}

    def evaluate(self, conversation: Conversation, completion: str) -> int:
        return final_answer_score(conversation, completion)
