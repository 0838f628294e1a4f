"""An offline CORE bundle built from held-out Python source, for machines that cannot download the real one.

What it measures: whether a model trained on code has learnt to continue code it has never seen.
Every example is the start of a function or class in the VALIDATION shard of the embedded corpus
(the standard library documents that training never reads): its definition line and up to a few
following lines as the context, and the line right after them as the continuation, joined by a
newline. Three tasks, all 0-shot, scored by the same CORE code as the real bundle:

    next_line           language_modeling   the greedy continuation of the context is exactly the
                                            next line, indentation included (random baseline 0)
    next_line_choice    multiple_choice     the true next line against 3 next lines of other
                                            examples, lowest mean loss wins (random baseline 25)
    context_choice      schema              the true context against 3 contexts of other examples,
                                            by the mean loss of the shared next line (baseline 25)

Selection rule: a context ends on a line whose last character is an ASCII letter or digit (a
punctuation pre-token would swallow the newline after it, and the context alone would then not
tokenize to a prefix of context + continuation); the next line is not blank and holds at most
MAX_LINE_CHARS characters after its indentation. Each definition gives at most one example, its
cut drawn with a fixed seed; windows are dedented so that a method reads like a function. The
examples are shuffled with the same seed and the first EXAMPLES_PER_TASK kept. The same corpus
gives byte-identical files.
"""

import random
import re
import textwrap
from pathlib import Path

from llm.data.corpus import corpus_dir, ensure_embedded_corpus
from llm.data.paths import exclusive_lock, publish_directory
from llm.data.shards import ShardReader, list_shards, split_shards
from llm.eval.bundle import write_bundle

BUILDER_VERSION = 1  # part of the directory name: a changed rule builds a new bundle beside the old
SEED = 1234
EXAMPLES_PER_TASK = 500
MAX_CONTEXT_LINES = 8
MAX_LINE_CHARS = 80
NUM_CHOICES = 4
DELIMITER = "\n"

_DEFINITION = re.compile(r"\s*(?:async def|def|class) ")
_ENDS_IN_WORD = re.compile(r"[A-Za-z0-9]$")


def offline_bundle_dir(base: Path) -> Path:
    return Path(base) / "eval_bundle_offline" / f"{corpus_dir(base).name}-v{BUILDER_VERSION}"


def definition_windows(document: str, rng: random.Random) -> list[tuple[str, str]]:
    """(context, next line) for each definition in `document` that has an admissible cut.

    A window stays inside its definition: it ends before the next definition or decorator line.
    """
    lines = [line.rstrip() for line in document.split("\n")]
    starts = [index for index, line in enumerate(lines) if _DEFINITION.match(line) or line.lstrip().startswith("@")]
    windows = []
    for start, end in zip(starts, starts[1:] + [len(lines)]):
        if not _DEFINITION.match(lines[start]):
            continue  # a decorator: it only ends the window of the definition before it
        cuts = [cut for cut in range(start + 1, min(start + 1 + MAX_CONTEXT_LINES, end))
                if _ENDS_IN_WORD.search(lines[cut - 1]) and 0 < len(lines[cut].strip()) <= MAX_LINE_CHARS]
        if cuts:
            cut = rng.choice(cuts)
            window = textwrap.dedent("\n".join(lines[start:cut + 1])).split("\n")
            windows.append(("\n".join(window[:-1]), window[-1]))
    return windows


def _with_alternatives(rng: random.Random, true: str, pool: list[str]) -> tuple[list[str], int]:
    """`true` among NUM_CHOICES - 1 other distinct values of `pool`, shuffled; and its index."""
    others = [value for value in rng.sample(pool, NUM_CHOICES) if value != true][:NUM_CHOICES - 1]
    options = others + [true]
    rng.shuffle(options)
    return options, options.index(true)


def offline_tasks(documents: list[str]) -> list[dict]:
    """The three tasks (as write_bundle takes them) from held-out documents."""
    rng = random.Random(SEED)
    windows = [window for document in documents for window in definition_windows(document, rng)]
    rng.shuffle(windows)
    windows = windows[:EXAMPLES_PER_TASK]
    contexts = sorted({context for context, _ in windows})
    next_lines = sorted({line for _, line in windows})
    if min(len(contexts), len(next_lines)) < NUM_CHOICES:
        raise ValueError(f"the documents give only {len(windows)} usable definitions; "
                         f"{NUM_CHOICES} distinct ones are needed at least")
    choice_examples, schema_examples = [], []
    for context, line in windows:
        choices, gold = _with_alternatives(rng, line, next_lines)
        choice_examples.append({"query": context, "choices": choices, "gold": gold})
        options, gold = _with_alternatives(rng, context, contexts)
        schema_examples.append({"context_options": options, "continuation": line, "gold": gold})
    common = {"num_fewshot": 0, "continuation_delimiter": DELIMITER, "category": "held-out python source"}
    return [
        {**common, "label": "next_line", "task_type": "language_modeling", "random_baseline": 0,
         "examples": [{"context": context, "continuation": line} for context, line in windows]},
        {**common, "label": "next_line_choice", "task_type": "multiple_choice", "random_baseline": 25,
         "examples": choice_examples},
        {**common, "label": "context_choice", "task_type": "schema", "random_baseline": 25,
         "examples": schema_examples},
    ]


def build_offline_bundle(corpus: Path, out_dir: Path) -> None:
    """Write the offline bundle of the corpus in `corpus` (its validation shard only) into out_dir."""
    validation = split_shards(list_shards(corpus), "val")
    write_bundle(Path(out_dir), offline_tasks(list(ShardReader(validation).iter_texts())))


def ensure_offline_bundle(base: Path) -> Path:
    """The offline bundle under the data home, built (with the embedded corpus, if need be) on first use."""
    corpus = ensure_embedded_corpus(base)
    target = offline_bundle_dir(base)
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        if not target.exists():
            with publish_directory(target) as staging:
                build_offline_bundle(corpus, staging)
            print(f"core: built the offline eval bundle at {target}")
    return target
