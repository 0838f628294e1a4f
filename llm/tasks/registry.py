"""Tasks by name, and the stage mixtures built from the entries of conf/stage/mixture/*.yaml.

An entry is `{task: NAME, **arguments}`: NAME is a key of TASKS and the arguments are that task's
own (its split, size, word list, view `start`/`stop`...). `epochs: N` lists the task N times, as
the reference oversamples its identity conversations. The data home is passed to the tasks that
read or download files.
"""

import inspect
from typing import Any, Mapping

from llm.tasks.arc import ARC
from llm.tasks.base import Task, TaskError, TaskMixture
from llm.tasks.chatterbot import Chatterbot
from llm.tasks.customjson import CustomJSON
from llm.tasks.gsm8k import GSM8K
from llm.tasks.gsm_symbolic import GSMSymbolic
from llm.tasks.humaneval import HumanEval
from llm.tasks.identity import identity_task
from llm.tasks.mmlu import MMLU
from llm.tasks.quiz_facts import QuizFacts
from llm.tasks.smoltalk import SmolTalk
from llm.tasks.spelling import SimpleSpelling, SpellingBee
from llm.tasks.wordnet_choice import WordNetChoice

TASKS = {
    "arc": ARC, "chatterbot": Chatterbot, "customjson": CustomJSON, "gsm8k": GSM8K, "gsm_symbolic": GSMSymbolic,
    "humaneval": HumanEval, "identity": identity_task, "mmlu": MMLU, "quiz_facts": QuizFacts, "smoltalk": SmolTalk,
    "simple_spelling": SimpleSpelling, "spelling_bee": SpellingBee, "wordnet_choice": WordNetChoice,
}


def build_task(label: str, entry: Mapping[str, Any], base: str | None = None) -> list[Task]:
    """The task an entry names, once per epoch it asks for."""
    arguments = dict(entry)
    name, epochs = arguments.pop("task", None), arguments.pop("epochs", 1)
    if name not in TASKS:
        raise TaskError(f"mixture entry {label}: task {name!r} is unknown; use one of {', '.join(sorted(TASKS))}")
    if not isinstance(epochs, int) or epochs < 1:
        raise TaskError(f"mixture entry {label}: epochs={epochs!r} must be a whole number of at least 1")
    make = TASKS[name]
    if "base" in inspect.signature(make).parameters:
        arguments["base"] = base
    try:
        task = make(**arguments)
    except TypeError as error:  # an argument the task does not take, or one it needs left out
        raise TaskError(f"mixture entry {label}: {name} {str(error).split(') ', 1)[-1]}") from None
    return [task] * epochs


def build_mixture(entries: Mapping[str, Mapping[str, Any]] | None, training: bool,
                  base: str | None = None) -> Task:
    """The reference's shuffled TaskMixture of the entries; a single entry is that task itself, unshuffled
    (as the reference validates SFT on SmolTalk's test split directly)."""
    tasks = [task for label, entry in (entries or {}).items() for task in build_task(label, entry, base)]
    if len(tasks) == 1 and not training:
        return tasks[0]
    return TaskMixture(tasks, training=training)
