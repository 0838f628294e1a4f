"""`wordnet_choice`: which word has this definition? Four-choice questions built from WordNet 3.0
glosses (Debian wordnet-base; WordNet licence, permissive). The offline stand-in for the reference's
multiple-choice training data (MMLU auxiliary_train, ARC); it is neither and keeps its own name.

Each synset whose definition does not contain a stem of its own words gives one question: the
synset's first word is the answer, three words of other synsets with the same part of speech are
the distractors, and the answer's letter is drawn uniformly. Every 10th synset (in file order) goes
to the test split; draws are seeded by the example's index, so an example never changes.
"""

import re

import numpy as np

from llm.tasks.base import Conversation, MultipleChoice
from llm.tasks.sources import debian_file

PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
TEST_EVERY = 10


def _gives_away(words: list[str], definition: str) -> bool:
    """True when a definition contains a stem of 4+ letters of one of its own words."""
    stems = {stem for word in words for stem in re.findall(r"[a-z]{4,}", word.lower())}
    return any(stem in definition.lower() for stem in stems)


def read_synsets(part_of_speech: str) -> list[tuple[list[str], str]]:
    """(words, definition) of every synset in /usr/share/wordnet/data.<pos>."""
    path = debian_file(f"/usr/share/wordnet/data.{part_of_speech}", "wordnet-base")
    synsets = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(" ") or " | " not in line:  # the licence header is indented
            continue
        fields, gloss = line.split(" | ", 1)
        fields = fields.split()
        word_count = int(fields[3], 16)
        # Adjective words may carry a syntactic marker such as "(a)"; underscores join multiword entries.
        words = [fields[4 + 2 * i].split("(")[0].replace("_", " ") for i in range(word_count)]
        definition = gloss.split(";")[0].strip()
        if definition and not _gives_away(words, definition):
            synsets.append((words, definition))
    return synsets


class WordNetChoice(MultipleChoice):
    name = "wordnet_choice"

    def __init__(self, split: str, **view):
        super().__init__(**view)
        self.use_split(split)
        self.questions = []  # (part of speech, synset number within it)
        self.synsets = {pos: read_synsets(pos) for pos in PARTS_OF_SPEECH}
        for pos, synsets in self.synsets.items():
            self.questions += [(pos, number) for number in range(len(synsets))
                               if (number % TEST_EVERY == 0) == (split == "test")]
        self.order = np.random.default_rng(42).permutation(len(self.questions))

    def num_examples(self) -> int:
        return len(self.questions)

    def get_example(self, index: int) -> Conversation:
        pos, number = self.questions[self.order[index]]
        words, definition = self.synsets[pos][number]
        rng = self.example_rng(index)
        distractors: list[str] = []
        while len(distractors) < len(self.letters) - 1:
            candidate = rng.choice(self.synsets[pos])[0][0]
            if candidate not in words and candidate not in distractors:
                distractors.append(candidate)
        return self.generated_question(rng, f'Which word means "{definition}"?', words[0], distractors)
