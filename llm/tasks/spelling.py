"""Spelling tasks that teach a small model the letters inside its tokens.

`SpellingBee`: how many times does a letter occur in a word? The assistant spells the word,
walks through it letter by letter keeping a running count, checks the count with a calculator
call (`'word'.count('l')`) and ends with `#### N`, scored like GSM8K. `SimpleSpelling`: spell a
word as `word:w,o,r,d`, the hard half of the first task in its shortest form.

Example i is drawn from a generator seeded with i (train) or 10,000,000 + i (test), in the
reference's order of draws. The words come from the reference's list (dwyl/english-words
words_alpha.txt, 370K words, downloaded with `words="dwyl"`) or, offline, from Debian's wamerican
(63,875 lower-case words; SCOWL licence); results on the latter carry the suffix `_wamerican`.
"""

import random
import re
from pathlib import Path

from llm.tasks.base import Conversation, Task, TaskError
from llm.tasks.gsm8k import final_answer_score
from llm.tasks.sources import debian_file, url_file

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
DWYL_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
WAMERICAN_PATH = "/usr/share/dict/american-english"
WORD = re.compile(r"[a-z]+")

# Ways people ask, in several languages; a third of them arrive lower-cased and half without "?".
QUESTIONS = [
    "How many {letter} are there in {word}",
    "How many times does the letter {letter} occur in {word}",
    "Count the {letter}s in {word}",
    "How often does {letter} show up in {word}",
    "What is the number of {letter} in the word {word}",
    "In {word}, how many times do you see {letter}",
    "Please count the letter {letter} in {word}",
    "Number of times {letter} appears in {word}",
    "How many {letter}'s does the word {word} have",
    "Tell me how many {letter} the word {word} contains",
    "Can you tell me how many {letter} are in {word}",
    "Give the count of {letter} in {word}",
    "{word}: how many {letter}",
    "Count every {letter} in the word {word}",
    "How many copies of the letter {letter} are in {word}",
    "What's the {letter} count for {word}",
    "How many times is the letter {letter} used in {word}",
    "I need the number of {letter} in {word}",
    "Quick question: how many {letter} in {word}",
    "Spell {word} and count the {letter}",
    "Does {word} have many {letter}? Give me the exact number",
    "How many {letter} can you find in {word}",
    "Find how many times {letter} occurs in {word}",
    "Letter {letter} in {word}: how many",
    "What number of {letter} letters is in {word}",
    "How many {letter} would I write when spelling {word}",
    "Count the occurrences of {letter} in the word {word}",
    "Check how many {letter} are in {word}",
    "Work out how many {letter} the word {word} has",
    "If you spell {word}, how many {letter} do you get",
    "¿Cuántas veces está la {letter} en {word}?",
    "¿Cuántas {letter} tiene la palabra {word}?",
    "Cuenta cuántas {letter} hay en {word}",
    "¿Cuántas letras {letter} aparecen en {word}?",
    "Combien y a-t-il de {letter} dans {word}",
    "Combien de fois voit-on {letter} dans le mot {word}",
    "Compte le nombre de {letter} dans {word}",
    "Wie viele {letter} hat das Wort {word}",
    "Wie oft steht {letter} in {word}",
    "Zähl bitte die {letter} in {word}",
    "Quante {letter} ci sono in {word}",
    "Quantas vezes aparece {letter} em {word}",
    "Hoeveel keer komt {letter} voor in {word}",
    "{word}里有多少个字母{letter}",
    "单词{word}中{letter}出现了几次",
    "请数一数{word}里的{letter}",
    "{word}에는 {letter}가 몇 개 들어 있나요",
    "{word}에서 {letter}는 몇 번 나오나요",
    "{word}という単語に{letter}はいくつありますか",
    "{word}の中の{letter}の数を教えて",
    "{word}には{letter}が何回出てきますか",
]
QUOTES = ["", "'", '"']


def read_words(source: str, base: str | None) -> list[str]:
    if source == "dwyl":
        path = url_file(DWYL_URL, base, is_valid=_is_word_list)
    elif source == "wamerican":
        path = debian_file(WAMERICAN_PATH, "wamerican")
    else:
        raise TaskError(f"spelling words must be dwyl or wamerican, got {source!r}")
    return [word for word in (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
            if WORD.fullmatch(word)]


def _is_word_list(path: Path) -> bool:
    """A complete words_alpha.txt: hundreds of thousands of lines, each one lower-case word."""
    lines = path.read_text(encoding="utf-8", errors="replace").split()
    return len(lines) > 300_000 and all(WORD.fullmatch(line) for line in lines)


def spelled(word: str) -> str:
    return f"{word}:{','.join(word)}"


class _Spelling(Task):
    base_name = "spelling"
    word_shuffle_seed: int | None = None

    def __init__(self, size: int = 1000, split: str = "train", words: str = "wamerican",
                 base: str | None = None, **view):
        super().__init__(**view)
        self.name = self.base_name if words == "dwyl" else f"{self.base_name}_{words}"
        self.use_split(split)
        self.size = size
        self.words = read_words(words, base)
        if self.word_shuffle_seed is not None:
            random.Random(self.word_shuffle_seed).shuffle(self.words)

    def num_examples(self) -> int:
        return self.size


class SpellingBee(_Spelling):
    base_name = "spellingbee"

    def get_example(self, index: int) -> Conversation:
        rng = self.example_rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(ALPHABET)  # sometimes absent
        count = word.count(letter)
        template = rng.choice(QUESTIONS)
        if rng.random() < 0.3:
            template = template.lower()
        letter_quote, word_quote = rng.choice(QUOTES), rng.choice(QUOTES)
        question = template.format(letter=f"{letter_quote}{letter}{letter_quote}", word=f"{word_quote}{word}{word_quote}")
        if rng.random() < 0.5:
            question += "?"
        # "{i}:{char}" has no space: " a" and "a" are different tokens, and the spelling uses "a".
        steps, running = [], 0
        for position, char in enumerate(word, 1):
            running += char == letter
            steps.append(f"{position}:{char} hit! count={running}" if char == letter else f"{position}:{char}")
        by_hand = (f"I need to count the letter '{letter}' in '{word}'. First I spell the word:\n{spelled(word)}\n\n"
                   f"Then I go through it one letter at a time:\n" + "\n".join(steps) + f"\n\nThat makes {running}.")
        parts = [{"type": "text", "text": by_hand},
                 {"type": "text", "text": "\n\nLet me check that with Python:\n\n"},
                 {"type": "python", "text": f"'{word}'.count('{letter}')"},
                 {"type": "python_output", "text": str(count)},
                 {"type": "text", "text": f"\n\nPython also says {count}.\n\nFinal answer:\n\n#### {count}"}]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: Conversation, completion: str) -> int:
        return final_answer_score(conversation, completion)


class SimpleSpelling(_Spelling):
    base_name = "simple_spelling"

    word_shuffle_seed = 42  # not the order SpellingBee draws from

    def get_example(self, index: int) -> Conversation:
        word = self.example_rng(index).choice(self.words)
        return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                             {"role": "assistant", "content": spelled(word)}]}
