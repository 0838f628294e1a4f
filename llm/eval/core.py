"""CORE: the in-context-learning ensemble of the DCLM paper, scored the way the reference scores it.

Every example becomes one or more prompts: few-shot examples (drawn with a seed fixed per example)
rendered as "context<delimiter>answer" blocks separated by a blank line, then the example itself.
One forward pass scores all of an example's prompts together, BOS-prefixed and right-padded:

- multiple_choice: the prompts share a context and differ in the continuation. The scored span of
  each starts where the token sequences first differ; the choice of lowest mean loss is picked.
- schema: the prompts differ in the context and share a continuation. The scored span is the
  longest common token suffix; the context of lowest mean loss over it is picked.
- language_modeling: correct when the greedy (argmax) prediction of every continuation token is
  that token. The context alone must tokenize to a prefix of context + continuation.

Prompts longer than the model's context lose tokens from the left; the continuation is kept.
The reference crops only for models with a hard length limit; ours could run past its trained
length, but positions it never trained on would score noise, so it crops to that length.

Accuracy per task, centered so that guessing scores 0 and a perfect model 1:
    centered = (accuracy - 0.01 * random_baseline) / (1 - 0.01 * random_baseline)
and CORE is the mean of the centered accuracies. Ranks take examples i = rank, rank + world, ...
and sum their per-example results, so any number of ranks gives the single-process answer.
"""

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llm.config.derived import ConfigError
from llm.eval.bundle import Task, ensure_core_bundle, load_bundle
from llm.eval.offline import ensure_offline_bundle

FEWSHOT_SEED = 1234  # example i draws its few-shot examples with Random(FEWSHOT_SEED + i)
SHUFFLE_SEED = 1337  # a task's examples are shuffled once, so that max_per_task takes a fair sample


def _shots(pairs: list[tuple[str, str]], delimiter: str) -> str:
    return "".join(f"{context}{delimiter}{answer}\n\n" for context, answer in pairs)


def render_multiple_choice(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    """One prompt per choice; few-shot examples show their gold choice."""
    shots = _shots([(shot["query"], shot["choices"][shot["gold"]]) for shot in fewshot], delimiter)
    return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    """One prompt per context option; few-shot examples show their gold context."""
    shots = _shots([(shot["context_options"][shot["gold"]], shot["continuation"]) for shot in fewshot], delimiter)
    return [f"{shots}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]


def render_language_modeling(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    """[prompt without the continuation, prompt with it].

    Contexts are stripped (some datasets carry trailing whitespace), and so is the prompt without
    the continuation: a trailing space would merge into the continuation's first token and the
    shorter prompt would no longer be a token prefix of the longer one.
    """
    shots = _shots([(shot["context"].strip(), shot["continuation"]) for shot in fewshot], delimiter)
    prefix = f"{shots}{item['context'].strip()}{delimiter}"
    return [prefix.strip(), prefix + item["continuation"]]


RENDERERS = {"multiple_choice": render_multiple_choice, "schema": render_schema,
             "language_modeling": render_language_modeling}


def fewshot_examples(data: list[dict], index: int, count: int) -> list[dict]:
    """`count` examples other than data[index], the same ones every time for this index."""
    others = [i for i in range(len(data)) if i != index]
    return [data[i] for i in random.Random(FEWSHOT_SEED + index).sample(others, count)]


def common_length(sequences: list[list[int]], from_end: bool = False) -> int:
    """How many leading (or trailing) tokens all sequences share."""
    shortest = min(len(sequence) for sequence in sequences)
    for offset in range(shortest):
        position = -1 - offset if from_end else offset
        if any(sequence[position] != sequences[0][position] for sequence in sequences):
            return offset
    return shortest


@dataclass(frozen=True)
class Span:
    """A BOS-prefixed prompt and the part of it that is scored: tokens[start:end], the continuation
    (multiple_choice, language_modeling) or the shared text after the context (schema)."""
    tokens: list[int]
    start: int
    end: int

    def cropped(self, max_tokens: int) -> "Span":
        """The span with tokens dropped from the left until it fits max_tokens; the scored part stays."""
        excess = max(0, len(self.tokens) - max_tokens)
        if excess and self.start - excess < 1:  # the first scored token needs one token before it
            raise ValueError(f"a continuation of {self.end - self.start} tokens does not fit a {max_tokens}-token "
                             "context: evaluate a model with a longer sequence_len, or drop the task")
        return Span(self.tokens[excess:], self.start - excess, self.end - excess)


def continuation_spans(task_type: str, tokenizer, prompts: list[str]) -> list[Span]:
    """The spans one example's prompts are scored on, one per choice (a single one for language_modeling)."""
    rows = tokenizer.encode(prompts, prepend=tokenizer.bos_id)
    if task_type == "multiple_choice":
        shared = common_length(rows)
        return [Span(row, shared, len(row)) for row in rows]
    if task_type == "schema":
        suffix = common_length(rows, from_end=True)
        return [Span(row, len(row) - suffix, len(row)) for row in rows]
    without, with_continuation = rows
    if len(without) >= len(with_continuation) or with_continuation[:len(without)] != without:
        raise ValueError(f"the context {prompts[0][-40:]!r} does not tokenize to a prefix of context + "
                         "continuation: fix the example (a continuation must start at a token boundary)")
    return [Span(with_continuation, len(without), len(with_continuation))]


@dataclass
class SpanScores:
    mean_loss: torch.Tensor  # (spans,) mean cross-entropy of the scored tokens
    all_greedy: torch.Tensor  # (spans,) bool: the argmax prediction of every scored token is that token


@torch.no_grad()
def score_spans(model, spans: list[Span], pad_id: int, device: torch.device) -> SpanScores:
    """One forward over the spans, right-padded with pad_id into a batch (nothing past `end` is read)."""
    ids = torch.full((len(spans), max(len(span.tokens) for span in spans)), pad_id, dtype=torch.long)
    for row, span in enumerate(spans):
        ids[row, :len(span.tokens)] = torch.tensor(span.tokens, dtype=torch.long)
    ids = ids.to(device)
    logits = model(ids)[:, :-1]
    targets = ids[:, 1:]
    # Position p predicts token p + 1, so a span's tokens [start, end) are predicted at [start - 1, end - 1).
    positions = torch.arange(targets.size(1), device=device)
    first = torch.tensor([span.start - 1 for span in spans], device=device).unsqueeze(1)
    last = torch.tensor([span.end - 1 for span in spans], device=device).unsqueeze(1)
    scored = (positions >= first) & (positions < last)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    mean_loss = losses.where(scored, 0.0).sum(dim=1) / scored.sum(dim=1)
    all_greedy = ((logits.argmax(dim=-1) == targets) | ~scored).all(dim=1)
    return SpanScores(mean_loss, all_greedy)


def score_example(model, tokenizer, task: Task, data: list[dict], index: int, max_tokens: int,
                  device: torch.device) -> bool:
    """Whether the model gets data[index] right."""
    item = data[index]
    prompts = RENDERERS[task.task_type](item, task.continuation_delimiter,
                                        fewshot_examples(data, index, task.num_fewshot))
    spans = [span.cropped(max_tokens) for span in continuation_spans(task.task_type, tokenizer, prompts)]
    scores = score_spans(model, spans, tokenizer.bos_id, device)  # BOS pads: any token would do
    if task.task_type == "language_modeling":
        return bool(scores.all_greedy[0])
    return int(scores.mean_loss.argmin()) == item["gold"]  # argmin takes the first of equal losses


def task_accuracy(model, tokenizer, task: Task, data: list[dict], max_tokens: int, device: torch.device) -> float:
    """Fraction of `data` the model gets right, the examples dealt out across ranks.

    Rank r scores examples r, r + world, r + 2 * world, ...; the ranks' counts add up to the count
    one process would get, and the fraction is taken in float32 as a mean over the examples would be.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = range(rank, len(data), world)
    hits = sum(score_example(model, tokenizer, task, data, index, max_tokens, device) for index in mine)
    correct = torch.tensor(float(hits), dtype=torch.float32, device=device)
    if world > 1:
        dist.all_reduce(correct)
    return (correct / len(data)).item()


def centered(accuracy: float, random_baseline: float) -> float:
    """Accuracy rescaled so that guessing (random_baseline, in percent) is 0 and perfect is 1."""
    chance = 0.01 * random_baseline
    return (accuracy - chance) / (1.0 - chance)


def evaluate_core(model, tokenizer, tasks: list[Task], max_per_task: int, max_tokens: int, device: torch.device,
                  say: Callable[[str], None] = lambda line: None) -> dict:
    """{"score": CORE, "tasks": {label: {"accuracy", "centered"}}}; max_per_task <= 0 means all examples."""
    results = {}
    for task in tasks:
        started = time.perf_counter()
        data = task.examples()
        random.Random(SHUFFLE_SEED).shuffle(data)
        if max_per_task > 0:
            data = data[:max_per_task]
        if not data:
            raise ConfigError(f"task {task.label} has no examples: check {task.data_path}")
        if task.num_fewshot >= len(data):  # few-shot examples come from the same (cropped) examples
            raise ConfigError(f"task {task.label} is {task.num_fewshot}-shot but has {len(data)} examples to draw "
                              f"from: raise eval.core_max_per_task above {task.num_fewshot}")
        accuracy = task_accuracy(model, tokenizer, task, data, max_tokens, device)
        results[task.label] = {"accuracy": accuracy, "centered": centered(accuracy, task.random_baseline)}
        say(f"core: {task.label} ({task.num_fewshot}-shot {task.task_type}, {len(data)} examples) | accuracy "
            f"{accuracy:.4f} | centered {results[task.label]['centered']:.4f} | {time.perf_counter() - started:.1f}s")
    score = sum(result["centered"] for result in results.values()) / len(results)
    return {"score": score, "tasks": results}


def locate_bundle(choice: str, base: Path) -> Path:
    """eval.bundle: core (the real bundle, downloaded), offline (built from the embedded corpus), or a directory."""
    if choice == "core":
        return ensure_core_bundle(base)
    if choice == "offline":
        return ensure_offline_bundle(base)
    path = Path(choice).expanduser()
    if not path.is_dir():
        raise ConfigError(f"eval.bundle={choice} is not a directory: use eval.bundle=core, eval.bundle=offline "
                          "or a directory laid out as the CORE eval bundle")
    return path


def core_score(model: torch.nn.Module, tokenizer, eval_cfg, runtime, base: Path) -> dict:
    """CORE of `model` on eval_cfg.bundle, every rank taking part: {"score", "tasks", "bundle"}.

    Pass the uncompiled model: every example has its own shape, which a static compile would
    recompile for. The model's train/eval mode is restored afterwards.
    """
    bundle = locate_bundle(eval_cfg.bundle, base)
    tasks = load_bundle(bundle)
    was_training = model.training
    model.eval()
    try:
        with runtime.autocast():
            result = evaluate_core(model, tokenizer, tasks, eval_cfg.core_max_per_task, model.config.sequence_len,
                                   runtime.device, say=print if runtime.is_master else (lambda line: None))
    finally:
        model.train(was_training)
    return {**result, "bundle": str(bundle)}
