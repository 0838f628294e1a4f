"""Packing throughput: how fast each packing turns already-tokenized documents into rows.

Documents are read from the configured corpus's training shards and tokenized once, before any
timing, with the tokenizer a run of the composed config would use; tokenizing has its own
benchmark (llm.bench.tokenizer). The packers are the loader's own, fed these documents in the
loader's batches, endlessly. The figures are tokens of rows produced per second (a row is
sequence_len + 1 tokens) and, for best-fit, the fraction of document tokens that cropping drops.
"""

import itertools
import time

import numpy as np

from llm.config import compose_run
from llm.data.loader import BestFitPacker, StreamPacker, TokenizedDoc, tokenize
from llm.data.paths import base_dir
from llm.data.shards import ShardReader, list_shards, split_shards
from llm.train import build

SEQUENCE_LENS = (512, 2048)
ROWS_PER_BATCH = 32
CORPUS_DOCS = 4000  # enough distinct documents that the buffer never sees a repeat at once


class PretokenizedFeed:
    """Tokenized documents served in the loader's batch size, cycling forever."""

    def __init__(self, docs: list[TokenizedDoc], batch_docs: int):
        batches = [docs[start:start + batch_docs] for start in range(0, len(docs), batch_docs)]
        self._batches = itertools.cycle(batches)

    def next_batch(self) -> list[TokenizedDoc]:
        return list(next(self._batches))


def corpus_documents(overrides: list[str], count: int = CORPUS_DOCS) -> tuple[list[TokenizedDoc], dict]:
    """The first `count` training documents of the configured corpus, tokenized; and what was used."""
    cfg = compose_run(overrides)
    base = base_dir(cfg.base_dir)
    corpus = build.corpus(cfg, base)
    tokenizer = build.tokenizer(cfg.data, corpus, base)
    reader = ShardReader(split_shards(list_shards(corpus), "train"), cfg.data.text_column)
    texts = list(itertools.islice(reader.iter_texts(), count))
    arrays = tokenize(tokenizer, texts, cfg.dataloader.tokenizer_threads)
    docs = [((0, 0, row), tokens) for row, tokens in enumerate(arrays)]
    about = {"documents": len(docs), "mean_doc_tokens": float(np.mean([len(t) for t in arrays])),
             "vocab_size": tokenizer.vocab_size, "buffer_size": cfg.dataloader.buffer_size,
             "tokenizer_batch_size": cfg.dataloader.tokenizer_batch_size}
    return docs, about


def packing_rate(packer, sequence_len: int, seconds: float) -> tuple[float, float]:
    """(row tokens per second, fraction of document tokens dropped) over about `seconds`."""
    packer.next_rows(ROWS_PER_BATCH, sequence_len)  # fills the buffer, which a running loader has done long ago
    produced = dropped = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        rows, crop = packer.next_rows(ROWS_PER_BATCH, sequence_len)
        produced += rows.size
        dropped += crop
    return produced / elapsed, dropped / (produced + dropped)


def benchmark_packer(overrides: list[str], seconds: float = 3.0, documents: int = CORPUS_DOCS) -> dict:
    """Best-fit and stream packing rates at each of SEQUENCE_LENS, on the composed config's tokenizer."""
    docs, about = corpus_documents(overrides, documents)
    result = {}

    def feed():
        return PretokenizedFeed(docs, about["tokenizer_batch_size"])

    for sequence_len in SEQUENCE_LENS:
        rate, crop = packing_rate(BestFitPacker(feed(), about["buffer_size"]), sequence_len, seconds)
        result[f"bestfit_{sequence_len}_tokens_per_sec"] = rate
        result[f"bestfit_{sequence_len}_crop_fraction"] = crop
        result[f"stream_{sequence_len}_tokens_per_sec"], _ = packing_rate(StreamPacker(feed()), sequence_len, seconds)
    return {**result, **about, "rows_per_batch": ROWS_PER_BATCH, "seconds_per_figure": seconds}
