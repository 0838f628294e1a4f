"""Tokenizer throughput on the configured corpus (the embedded one by default): training the BPE merges, and encoding documents.

Training learns the composed config's vocabulary size from a slice of the training shards, as
ensure_tokenizer would (each document capped the same way), and is timed once. Encoding uses the
tokenizer runs of that config use and times two paths over the first documents, each the best of
a few repeats: the tokenizer's batch encode alone, and the loader's `tokenize`, which adds BOS and
turns each document into an int32 array (what packing starts from).
"""

import itertools
import time

from llm.config import compose_run
from llm.data.loader import tokenize
from llm.data.paths import base_dir
from llm.data.shards import ShardReader, list_shards, split_shards
from llm.train import build
from llm.data.tokenizer import DOC_CAP_CHARS, Tokenizer

TRAIN_CHARS = 5_000_000
ENCODE_DOCS = 2000
REPEATS = 3


def _texts_up_to(reader: ShardReader, chars: int) -> list[str]:
    texts, total = [], 0
    for text in reader.iter_texts():
        texts.append(text[:DOC_CAP_CHARS])
        total += len(texts[-1])
        if total >= chars:
            break
    return texts


def _best_seconds(*runs) -> list[float]:
    """Each run's best time over REPEATS rounds; the runs alternate, so a busy moment hits them alike."""
    best = [float("inf")] * len(runs)
    for _ in range(REPEATS):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def benchmark_tokenizer(overrides: list[str], train_chars: int = TRAIN_CHARS, encode_docs: int = ENCODE_DOCS) -> dict:
    cfg = compose_run(overrides)
    base = base_dir(cfg.base_dir)
    corpus = build.corpus(cfg, base)
    vocab_size, threads = cfg.data.vocab_size, cfg.dataloader.tokenizer_threads
    reader = ShardReader(split_shards(list_shards(corpus), "train"), cfg.data.text_column)

    training_texts = _texts_up_to(reader, train_chars)
    trained_chars = sum(map(len, training_texts))
    start = time.perf_counter()
    Tokenizer.train(training_texts, vocab_size)
    train_sec = time.perf_counter() - start

    tokenizer = build.tokenizer(cfg.data, corpus, base)
    texts = list(itertools.islice(reader.iter_texts(), encode_docs))
    chars = sum(map(len, texts))
    tokens = sum(map(len, tokenizer.encode(texts, num_threads=threads)))
    encode_sec, arrays_sec = _best_seconds(
        lambda: tokenizer.encode(texts, prepend=tokenizer.bos_id, num_threads=threads),
        lambda: tokenize(tokenizer, texts, threads))
    return {
        "train_chars_per_sec": trained_chars / train_sec,
        "train_sec": train_sec,
        "train_chars": trained_chars,
        "encode_chars_per_sec": chars / encode_sec,
        "encode_to_arrays_chars_per_sec": chars / arrays_sec,
        "encode_tokens_per_sec": tokens / encode_sec,
        "chars_per_token": chars / tokens,
        "encode_chars": chars,
        "encode_threads": threads,
        "vocab_size": vocab_size,
    }
