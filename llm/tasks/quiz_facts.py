"""`quiz_facts`: four-choice questions on facts from the quiz files of Debian's bsdgames (BSD):
capitals of countries, provinces and states, chemical elements, animal young, collective nouns,
opposites and the language of flowers. The offline stand-in for ARC's short knowledge questions;
it is not ARC and keeps its own name.

A quiz line is `field:field:...`; in a field `{x}` is optional text, `a|b` and `[a|b]` are
alternatives (an accent is typed as an overstrike, `e^H'`), and a trailing backslash continues the
line (those multi-line entries are skipped). The first plain spelling of each field is kept. Each (file, question, answer field) below gives a family
of questions; distractors are other answers of the same family, so every choice is plausible.
Every 10th fact of a family goes to the test split; draws are seeded by the example's index.
"""

import re

import numpy as np

from llm.tasks.base import Conversation, MultipleChoice, TaskError
from llm.tasks.sources import debian_file

QUIZ_DIR = "/usr/share/games/bsdgames/quiz"
TEST_EVERY = 10

# file -> [(question with {0}, {1}... for the line's fields, number of the answer field)]
FAMILIES = {
    "africa": [("What is the capital of {0}?", 1)],
    "america": [("What is the capital of {0}?", 1)],
    "asia": [("What is the capital of {0}?", 1)],
    "europe": [("What is the capital of {0}?", 1)],
    "province": [("What is the capital of the Canadian province of {0}?", 1)],
    "state": [("What is the capital of the US state of {0}?", 1), ("What is the state flower of {0}?", 3)],
    "elements": [("Which chemical element has the symbol {0}?", 3), ("What is the chemical symbol of {3}?", 0),
                 ("What is the atomic number of {3}?", 1)],
    "babies": [("A young {0} grows up to be which animal?", 1)],
    "collectives": [("What is the collective noun for a group of {0}?", 1)],
    "posneg": [("What is the opposite of {0}?", 1)],
    "sexes": [("What is the female counterpart of {0}?", 1)],
    "flowers": [("In the language of flowers, what does the {0} stand for?", 1)],
}
OPTIONAL = re.compile(r"\{([^{}]*)\}")
ALTERNATIVES = re.compile(r"\[([^\[\]]*)\]")


def _first_plain(alternatives: str) -> str:
    """The first alternative without a backspace (accents are typed as overstrikes: `e^H'`)."""
    return next((choice for choice in alternatives.split("|") if "\b" not in choice), "")


def first_spelling(field: str) -> str:
    """The field in its first spelling: `{x}` dropped, `{a|b}` as a, `[a|b]` and `a|b` as a."""
    while OPTIONAL.search(field):
        field = OPTIONAL.sub(lambda match: match.group(1).split("|")[0] if "|" in match.group(1) else "", field)
    while ALTERNATIVES.search(field):
        field = ALTERNATIVES.sub(lambda match: _first_plain(match.group(1)), field)
    return _first_plain(field).strip()


def read_facts(name: str) -> list[list[str]]:
    path = debian_file(f"{QUIZ_DIR}/{name}", "bsdgames")
    facts = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line and not line.endswith("\\"):
            fields = [first_spelling(field) for field in line.split(":")]
            if all(fields):
                facts.append(fields)
    return facts


class QuizFacts(MultipleChoice):
    name = "quiz_facts"

    def __init__(self, split: str, **view):
        super().__init__(**view)
        self.use_split(split)
        self.questions = []  # (question text, answer, the family's other answers)
        for filename, families in FAMILIES.items():
            facts = read_facts(filename)
            for template, answer_field in families:
                usable = [fields for fields in facts if len(fields) > answer_field]
                answers = sorted({fields[answer_field] for fields in usable})
                if len(answers) < len(self.letters):
                    raise TaskError(f"{QUIZ_DIR}/{filename} has too few answers; reinstall bsdgames")
                for number, fields in enumerate(usable):
                    if (number % TEST_EVERY == 0) == (split == "test"):
                        self.questions.append((template.format(*fields), fields[answer_field], answers))
        self.order = np.random.default_rng(42).permutation(len(self.questions))

    def num_examples(self) -> int:
        return len(self.questions)

    def get_example(self, index: int) -> Conversation:
        question, answer, answers = self.questions[self.order[index]]
        rng = self.example_rng(index)
        distractors = rng.sample([other for other in answers if other != answer], len(self.letters) - 1)
        return self.generated_question(rng, question, answer, distractors)
