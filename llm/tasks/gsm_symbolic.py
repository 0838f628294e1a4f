"""`gsm_symbolic`: grade-school word problems from reasoning-gym's 100 GSM-Symbolic templates
(Apache-2.0), the offline stand-in for GSM8K. The templates were made from GSM8K *test*
questions, so a score here is not a GSM8K score, and a model trained on them must not report
real GSM8K test results.

The generators are read out of the pinned reasoning-gym wheel in the data home (installing it
would pull ~350 MB of dependencies the generators do not use) and run with only the standard
library; only the templates reasoning-gym marks as correct (`tasks_ok`) are used. Example i draws
its template and numbers from a generator seeded with i (train) or 10,000,000 + i (test).

The worked solutions have no calculator annotations, so each calculation written with bare
numbers (`28 * 3 = 84`) whose value the project's calculator confirms is annotated as GSM8K does
(`28 * 3 = <<28*3=84>>84`) and becomes a python/python_output pair; about two thirds of the
solutions get at least one. Steps written with units (`50 patients/day * 7 days`) stay text.
Answers end in `#### N` and are scored like GSM8K.
"""

import ast
import builtins
import math
import random
import re
import types
import zipfile
from typing import Any, Callable

from llm.tasks.base import Conversation, Task, TaskError
from llm.inference.calculator import calculate
from llm.tasks.gsm8k import final_answer_score, solution_parts
from llm.tasks.sources import Wheel

REASONING_GYM = Wheel("reasoning-gym", "0.1.25", "7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435")
PACKAGE_DIR = "reasoning_gym/arithmetic/gsm_symbolic"
GENERATOR_FILES = ("generators_00_49.py", "generators_50_99.py")
Generator = Callable[[random.Random, float], dict[str, Any]]
NUMBER = r"\d+(?:[.,]\d+)*"
# numbers joined by + - * / x (an optional $ on each), then "=", then the written result
CALCULATION = re.compile(rf"(?<![\w.$])(\$?{NUMBER}(?:\s*[-+*/x×]\s*\$?{NUMBER})+)(\s*=\s*\$?)({NUMBER})(?!\w)")


def annotate_calculations(solution: str) -> str:
    """Mark each calculation the calculator confirms as GSM8K's `<<expression=result>>`."""
    def annotate(match: re.Match) -> str:
        written, equals, result = match.groups()
        expression = re.sub(r"[x×]", "*", written).replace("$", "").replace(" ", "").replace(",", "")
        value = calculate(expression)
        if value is None or not math.isclose(value, float(result.replace(",", "")), rel_tol=1e-9, abs_tol=1e-9):
            return match.group(0)
        return f"{written}{equals}<<{expression}={result}>>{result}"
    return CALCULATION.sub(annotate, solution)


def _ok_templates(wheel: zipfile.ZipFile) -> list[int]:
    """The `tasks_ok` list of gsm_symbolic.py, read as a literal without importing the package."""
    module = ast.parse(wheel.read(f"{PACKAGE_DIR}/gsm_symbolic.py"))
    for statement in module.body:
        if isinstance(statement, ast.Assign) and getattr(statement.targets[0], "id", None) == "tasks_ok":
            return ast.literal_eval(statement.value)
    raise TaskError(f"{REASONING_GYM.requirement} has no tasks_ok list; fetch the pinned wheel again")


def load_generators(wheel: zipfile.ZipFile) -> dict[int, Generator]:
    """Template number -> generate_N, run against the wheel's own (stdlib-only) utils module.

    The package's __init__ imports every task and its heavy dependencies, so the generator files
    are executed with an import hook that serves `reasoning_gym.utils` from the wheel instead.
    """
    utils = types.ModuleType("reasoning_gym.utils")
    exec(compile(wheel.read("reasoning_gym/utils.py"), "reasoning_gym/utils.py", "exec"), utils.__dict__)

    def import_hook(name, globals=None, locals=None, fromlist=(), level=0):
        return utils if name == utils.__name__ else builtins.__import__(name, globals, locals, fromlist, level)

    generators = {}
    for filename in GENERATOR_FILES:
        namespace = {"__builtins__": {**vars(builtins), "__import__": import_hook}, "__name__": filename[:-3]}
        exec(compile(wheel.read(f"{PACKAGE_DIR}/{filename}"), filename, "exec"), namespace)
        generators.update({int(key.removeprefix("generate_")): value for key, value in namespace.items()
                           if key.startswith("generate_")})
    return generators


class GSMSymbolic(Task):
    name = "gsm_symbolic"

    def __init__(self, size: int, split: str = "train", base: str | None = None, **view):
        super().__init__(**view)
        self.use_split(split)
        self.size = size
        with REASONING_GYM.open(base) as wheel:
            generators = load_generators(wheel)
            self.templates = [generators[number] for number in _ok_templates(wheel)]

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        rng = self.example_rng(index)
        problem = rng.choice(self.templates)(rng, 1.0)
        return {"messages": [{"role": "user", "content": problem["question"]},
                             {"role": "assistant", "content": solution_parts(annotate_calculations(problem["metadata"]["answer_cot"]))}]}

    def evaluate(self, conversation: Conversation, completion: str) -> int:
        return final_answer_score(conversation, completion)
