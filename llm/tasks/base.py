"""A task: a dataset of conversations with a name, a kind of evaluation and a train/eval-only mark.

A conversation is `{"messages": [{"role": ..., "content": ...}, ...], ...}`; content is a string or
a list of parts `{"type": "text"|"python"|"python_output", "text": str}`. Extra keys (letters,
subject, test, entry_point) carry what `evaluate` needs.

Every task is a lightweight view `start:stop:step` over its examples, as in the reference. The
mixture shuffles the (task, example) pairs with `random.Random(42)`, so a mixture over the same
datasets visits them in the reference's order. A task marked eval-only (a benchmark's test split)
is refused by any mixture built for training.
"""

import bisect
import random
from typing import Any, Sequence

Conversation = dict[str, Any]
MIXTURE_SEED = 42
TEST_SEED_OFFSET = 10_000_000  # generated tasks seed test example i with this + i: above any train index


class TaskError(ValueError):
    """A task that cannot be built as asked; the message names the fix."""


class Task:
    """A view `start:stop:step` over `num_examples()` conversations.

    Subclasses set `name` (the name in every table of results), `trainable` (False for data that
    must never be trained on) and `eval_type` ('generative' or 'categorical'), and implement
    `get_example`, `num_examples` (unless they keep their examples in `self.rows`) and, for
    evaluation, `evaluate`.
    """

    name: str = "task"
    trainable: bool = True
    eval_type: str = "generative"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise TaskError(f"{type(self).__name__}: need 0 <= start <= stop and step >= 1, "
                            f"got start={start} stop={stop} step={step}")
        self.start, self.stop, self.step = start, stop, step

    def use_split(self, split: str, allowed: Sequence[str] = ("train", "test")) -> None:
        """Check the split's name; only a train split may be trained on."""
        if split not in allowed:
            raise TaskError(f"{self.name} split must be one of {'|'.join(allowed)}, got {split!r}")
        self.split, self.trainable = split, split == "train"

    def example_rng(self, index: int) -> random.Random:
        """The generator of example `index` of a generated task: the same example every time."""
        return random.Random(index if self.split == "train" else TEST_SEED_OFFSET + index)

    def num_examples(self) -> int:
        """Tasks read from a table keep its rows in `self.rows`; generated tasks override this."""
        return len(self.rows)

    def get_example(self, index: int) -> Conversation:
        raise NotImplementedError

    def evaluate(self, conversation: Conversation, completion: str) -> int:
        raise NotImplementedError(f"{self.name} is training data only; it has no evaluation")

    def __len__(self) -> int:
        # A stop past the end means the end (the offline stand-ins are smaller than the real sets).
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index: int) -> Conversation:
        if not isinstance(index, int) or not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index!r} out of range for {len(self)} examples")
        return self.get_example(self.start + index * self.step)


def _check_tasks(kind: str, tasks: Sequence[Task], training: bool) -> None:
    if training:
        for task in tasks:
            if not task.trainable:
                raise TaskError(f"{kind}: {task.name} is evaluation-only data and cannot enter training; "
                                f"use its train split, or pass training=False for a validation set")
    if sum(len(task) for task in tasks) == 0:
        names = ", ".join(task.name for task in tasks) or "no tasks"
        raise TaskError(f"{kind} has no rows ({names}); give it at least one task with examples")


class TaskSequence(Task):
    """The tasks one after another (a curriculum)."""

    def __init__(self, tasks: Sequence[Task], training: bool = True, **view):
        _check_tasks(type(self).__name__, tasks, training)
        super().__init__(**view)
        self.tasks = list(tasks)
        self.trainable = training
        self.name = "+".join(task.name for task in self.tasks)
        # offsets[i] is the global index of task i's first example.
        self.offsets = [0]
        for task in self.tasks:
            self.offsets.append(self.offsets[-1] + len(task))

    def num_examples(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(task number, index within that task) of the global `index`."""
        task_number = bisect.bisect_right(self.offsets, index) - 1
        return task_number, index - self.offsets[task_number]

    def get_example(self, index: int) -> Conversation:
        task_number, local = self.locate(index)
        return self.tasks[task_number][local]


class TaskMixture(TaskSequence):
    """All examples of all tasks in one fixed shuffled order; list a task twice to oversample it.

    The reference shuffles the list of (task, index) pairs in task order with random.Random(42);
    shuffling the global indices 0..N-1 with the same generator gives the same permutation.
    """

    def __init__(self, tasks: Sequence[Task], training: bool = True, **view):
        super().__init__(tasks, training, **view)
        self.order = list(range(self.offsets[-1]))
        random.Random(MIXTURE_SEED).shuffle(self.order)

    def get_example(self, index: int) -> Conversation:
        return super().get_example(self.order[index])


def render_multiple_choice(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """The reference's multiple-choice prompt: each choice followed by `=LETTER`.

    The letter comes after its choice (small models bind it better) with no space before it, so
    that the prompt's letter is the same token as the one-letter answer.
    """
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


def choice_conversation(question: str, letters: Sequence[str], choices: Sequence[str], answer: str) -> Conversation:
    """A multiple-choice conversation: the rendered question, the answer's letter, the letters."""
    return {"messages": [{"role": "user", "content": render_multiple_choice(question, letters, choices)},
                         {"role": "assistant", "content": answer}],
            "letters": letters}


class MultipleChoice(Task):
    """A categorical task whose answer is one letter; subclasses build the conversations."""

    eval_type = "categorical"
    letters = ("A", "B", "C", "D")

    def generated_question(self, rng: random.Random, question: str, answer: str, distractors: Sequence[str]) -> Conversation:
        """A generated question: the answer put among the distractors at a uniformly drawn letter."""
        position = rng.randrange(len(self.letters))
        choices = [*distractors[:position], answer, *distractors[position:]]
        return choice_conversation(question, self.letters, choices, self.letters[position])

    def evaluate(self, conversation: Conversation, completion: str) -> int:
        letters = conversation["letters"]
        if completion not in letters:
            raise TaskError(f"{self.name}: answer {completion!r} is not one of the letters {list(letters)}; "
                            f"narrow the prediction to the letters before evaluating")
        return int(completion == conversation["messages"][-1]["content"])


def message_problem(messages: Any, allow_system: bool) -> str | None:
    """What is wrong with a list of messages, or None: user and assistant alternate, user first,
    at least one exchange, string contents (a leading system message where `allow_system`)."""
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        return "expected a JSON array of message objects"
    if allow_system and messages and messages[0].get("role") == "system":
        messages = messages[1:]
    if len(messages) < 2:
        return f"a conversation needs at least 2 messages, got {len(messages)}"
    for number, message in enumerate(messages):
        expected = "user" if number % 2 == 0 else "assistant"
        if message.get("role") != expected:
            return f"message {number} has role {message.get('role')!r}, expected {expected!r}"
        if not isinstance(message.get("content"), str):
            return f"message {number} needs a string 'content'"
    return None
