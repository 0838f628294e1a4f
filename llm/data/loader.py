"""Pretraining batches: documents from parquet shards, tokenized and packed into rows, per rank.

Rank r of W reads row groups r, r+W, r+2W, ... of every shard, shard after shard, and starts over
when the shards run out (a new epoch), so ranks see disjoint documents that together cover the
data. Documents are tokenized in batches, each with BOS in front. Two packings turn them into
rows of sequence_len + 1 tokens (inputs are a row minus its last token, targets minus its first):

- bos_bestfit: every row starts at a document's BOS. A buffer of `buffer_size` documents is kept
  full; a row is filled by repeatedly taking the largest buffered document that still fits whole
  (the earliest read of equals), and when none fits, the shortest one is cropped to fill the row
  exactly (its rest is dropped). No padding; about a third of the tokens are dropped at sequence
  length 2048. The buffer is kept sorted by length, so each choice is a binary search.
- stream: documents are concatenated into one token stream, cut into consecutive rows that share
  their boundary token (B*T+1 tokens make a batch, the next batch starts T*B tokens later).
  Nothing is dropped, but rows start mid-document.

Resuming is exact: every document is addressed by (shard, row group, row); the state holds the
read cursor and the addresses of the documents read but not yet fully used (re-tokenized on
load), so a restored loader yields the very batches the original would have.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from llm.data.bestfit import BestFitBuffer
from llm.data.shards import ShardReader, list_shards, split_shards
from llm.data.tokenizer import Tokenizer

PACKINGS = ("bos_bestfit", "stream")
SHARDINGS = ("row_groups", "rows")
STATE_VERSION = 1


class DocPosition(NamedTuple):
    """Where a rank's reading stands: which pass over the data, and which document."""

    epoch: int
    shard: int
    row_group: int
    row: int


Address = tuple[int, int, int]  # (shard, row group, row): one document
TokenizedDoc = tuple[Address, np.ndarray]  # its tokens, BOS first, as int32
ROW_DTYPE = np.int64  # what embedding lookups index with, so rows become tensors without a copy


def tokenize(tokenizer: Tokenizer, texts: list[str], threads: int) -> list[np.ndarray]:
    """Each text's tokens with BOS in front, as an int32 array.

    Turning Python ints into machine ints happens once here, per document, rather than per row:
    rows are then built by array copies, and become tensors without a per-token conversion.
    """
    return [np.fromiter(tokens, dtype=np.int32, count=len(tokens))
            for tokens in tokenizer.encode(texts, prepend=tokenizer.bos_id, num_threads=threads)]


def to_device(*host: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Host tensors copied to `device`; on CUDA from pinned memory, so the copies overlap with compute."""
    on_cuda = device.type == "cuda"
    return tuple((tensor.pin_memory() if on_cuda else tensor).to(device, non_blocking=on_cuda) for tensor in host)


def check_positive(**values: int) -> None:
    """Refuse any of these settings below 1, by name."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def check_state(state: dict, version: int, settings: dict) -> None:
    """Refuse a saved loader state of another format version or saved under other settings."""
    if state.get("version") != version:
        raise ValueError(f"loader state version {state.get('version')} is not {version}; "
                         "it was saved by another version of this code and cannot be resumed")
    for key, value in settings.items():
        if state.get(key) != value:
            raise ValueError(f"loader state was saved with {key}={state.get(key)!r} but this loader has "
                             f"{key}={value!r}; resume with the same data and loader settings")


class _DocumentFeed:
    """This rank's documents in reading order, endlessly, tokenized a slice of a row group at a time."""

    def __init__(self, reader: ShardReader, tokenizer: Tokenizer, rank: int, world_size: int,
                 batch_docs: int, threads: int):
        self.reader, self.tokenizer = reader, tokenizer
        self.rank, self.world_size = rank, world_size
        self.batch_docs, self.threads = batch_docs, threads
        # The next document to read; it may point just past a row group's end until the next read.
        self.cursor = DocPosition(epoch=1, shard=0, row_group=rank, row=0)

    def _next_existing(self, position: DocPosition) -> DocPosition:
        """The first document at or after `position` in this rank's order, wrapping into new epochs."""
        epoch, shard, row_group, row = position
        start_epoch = epoch
        while True:
            row_counts = self.reader.row_counts(shard)
            if row_group < len(row_counts):
                if row < row_counts[row_group]:
                    return DocPosition(epoch, shard, row_group, row)
                row_group, row = row_group + self.world_size, 0
                continue
            shard, row_group, row = shard + 1, self.rank, 0
            if shard == len(self.reader.shard_paths):
                shard, epoch = 0, epoch + 1
                if epoch > start_epoch + 1:  # a whole pass found nothing
                    raise ValueError(f"rank {self.rank} of {self.world_size} gets no documents from "
                                     f"these shards; use fewer ranks or shards with more row groups")

    def next_batch(self) -> list[TokenizedDoc]:
        """The next slice of up to `batch_docs` documents (never crossing a row group), tokenized."""
        position = self._next_existing(self.cursor)
        texts = self.reader.read_row_group(position.shard, position.row_group)
        end = min(position.row + self.batch_docs, len(texts))
        token_arrays = tokenize(self.tokenizer, texts[position.row:end], self.threads)
        self.cursor = position._replace(row=end)
        return [((position.shard, position.row_group, row), tokens)
                for row, tokens in zip(range(position.row, end), token_arrays)]

    def tokenize_at(self, addresses: list[Address]) -> list[TokenizedDoc]:
        """Re-read and tokenize documents by address, reading each row group once."""
        row_groups: dict[tuple[int, int], list[str]] = {}
        texts = []
        for shard, row_group, row in addresses:
            if (shard, row_group) not in row_groups:
                row_groups[shard, row_group] = self.reader.read_row_group(shard, row_group)
            texts.append(row_groups[shard, row_group][row])
        return list(zip(addresses, tokenize(self.tokenizer, texts, self.threads)))


class Packer:
    """Turns the feed's documents into rows; holds the documents read but not yet fully used.

    The feed is anything whose `next_batch()` returns the next TokenizedDocs: the loader's own
    feed, or pre-tokenized documents when packing alone is measured (llm.bench.packer).
    """

    def __init__(self, feed: _DocumentFeed):
        self.feed = feed
        self.offset = 0  # tokens of the first held document already used (only the stream splits documents)

    def next_rows(self, batch_size: int, sequence_len: int) -> tuple[np.ndarray, int]:
        """(batch_size, sequence_len + 1) tokens, and how many document tokens were dropped."""
        raise NotImplementedError

    def held(self) -> list[Address]:
        """The documents read but not fully used, in reading order: what a resumed loader re-reads."""
        raise NotImplementedError

    def restore(self, docs: list[TokenizedDoc], offset: int) -> None:
        """Hold exactly these documents (in reading order), as `held` and `offset` described them."""
        raise NotImplementedError


class BestFitPacker(Packer):
    """BOS-aligned best-fit packing over a buffer of whole documents (decisions: llm.data.bestfit).

    `crop` picks the document cropped when none fits: "shortest" for pretraining, "oldest" for
    midtraining (llm.data.chat_loader).
    """

    def __init__(self, feed: _DocumentFeed, buffer_size: int, crop: str = "shortest"):
        super().__init__(feed)
        self._buffer = BestFitBuffer(buffer_size, crop)
        self._docs: dict[int, TokenizedDoc] = {}  # by arrival number; insertion order is reading order

    def _add(self, docs: list[TokenizedDoc]) -> None:
        for doc in docs:
            self._docs[self._buffer.add(len(doc[1]))] = doc

    def _refill(self) -> None:
        self._add(self.feed.next_batch())

    def next_rows(self, batch_size: int, sequence_len: int) -> tuple[np.ndarray, int]:
        rows = np.empty((batch_size, sequence_len + 1), dtype=ROW_DTYPE)
        dropped = 0
        for row in rows:
            filled = 0
            for arrival, used in self._buffer.pack_row(sequence_len + 1, self._refill):
                tokens = self._docs.pop(arrival)[1]
                row[filled:filled + used] = tokens[:used]
                dropped += len(tokens) - used
                filled += used
        return rows, dropped

    def held(self) -> list[Address]:
        return [address for address, _ in self._docs.values()]

    def restore(self, docs: list[TokenizedDoc], offset: int) -> None:
        self._buffer = BestFitBuffer(self._buffer.size, self._buffer.crop)
        self._docs = {}
        self._add(docs)


class StreamPacker(Packer):
    """The flat token stream: consecutive windows over concatenated documents."""

    def __init__(self, feed: _DocumentFeed):
        super().__init__(feed)
        self.docs: list[TokenizedDoc] = []  # in reading order; the first is used from `offset` on

    def next_rows(self, batch_size: int, sequence_len: int) -> tuple[np.ndarray, int]:
        needed = batch_size * sequence_len + 1  # +1: the last input's target
        available = sum(len(tokens) for _, tokens in self.docs) - self.offset
        while available < needed:
            batch = self.feed.next_batch()
            self.docs.extend(batch)
            available += sum(len(tokens) for _, tokens in batch)
        pieces, taken, start = [], 0, self.offset
        for _, tokens in self.docs:
            pieces.append(tokens[start:start + needed - taken])
            taken += len(pieces[-1])
            start = 0
            if taken == needed:
                break
        window = np.concatenate(pieces, dtype=ROW_DTYPE)
        self._advance(batch_size * sequence_len)
        # Consecutive rows share their boundary token: row b is window[b*T : (b+1)*T + 1].
        rows = np.lib.stride_tricks.sliding_window_view(window, sequence_len + 1)[::sequence_len]
        return rows.copy(), 0

    def _advance(self, count: int) -> None:
        while count > 0:
            left_in_first = len(self.docs[0][1]) - self.offset
            if left_in_first > count:
                self.offset += count
                return
            self.docs.pop(0)
            self.offset = 0
            count -= left_in_first

    def held(self) -> list[Address]:
        return [address for address, _ in self.docs]

    def restore(self, docs: list[TokenizedDoc], offset: int) -> None:
        self.docs, self.offset = docs, offset


class TokenLoader:
    """Endless iterator of (inputs, targets) LongTensors of shape (batch_size, sequence_len)."""

    def __init__(self, tokenizer: Tokenizer, shard_paths: list[Path], batch_size: int, sequence_len: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 packing: str = "bos_bestfit", buffer_size: int = 1000, tokenizer_batch_size: int = 128,
                 tokenizer_threads: int = 4, text_column: str = "text", shard_by: str = "row_groups"):
        """shard_by="row_groups": each rank reads and packs its own row groups (no duplicated work).
        shard_by="rows": every rank packs the whole stream and keeps its slice of each global batch,
        so the global batches do not depend on the number of ranks (exactly reproducible across world
        sizes, at the price of every rank tokenizing everything)."""
        if shard_by not in SHARDINGS:
            raise ValueError(f"shard_by must be one of {SHARDINGS}, got {shard_by!r}")
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        check_positive(batch_size=batch_size, sequence_len=sequence_len, buffer_size=buffer_size,
                       tokenizer_batch_size=tokenizer_batch_size, tokenizer_threads=tokenizer_threads)
        self.batch_size, self.sequence_len = batch_size, sequence_len
        self.device = torch.device(device)
        # With row sharding this rank keeps rows [first_row, first_row + batch_size) of each global batch.
        self._rows_packed = batch_size * world_size if shard_by == "rows" else batch_size
        self._first_row = batch_size * rank if shard_by == "rows" else 0
        feed_rank, feed_world = (0, 1) if shard_by == "rows" else (rank, world_size)
        self._feed = _DocumentFeed(ShardReader(shard_paths, text_column), tokenizer, feed_rank, feed_world,
                                   tokenizer_batch_size, tokenizer_threads)
        self._packer = (BestFitPacker(self._feed, buffer_size) if packing == "bos_bestfit"
                        else StreamPacker(self._feed))
        # What a saved state must agree on for its batches to continue this loader's sequence.
        self._settings = {"packing": packing, "batch_size": batch_size, "sequence_len": sequence_len,
                          "rank": rank, "world_size": world_size, "buffer_size": buffer_size,
                          "tokenizer_batch_size": tokenizer_batch_size, "vocab_size": tokenizer.vocab_size,
                          "num_shards": len(shard_paths), "shard_by": shard_by}
        self._tokens_taken = 0  # document tokens consumed by rows, counting cropped ones
        self._tokens_dropped = 0

    def __iter__(self) -> "TokenLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows, dropped = self._packer.next_rows(self._rows_packed, self.sequence_len)
        self._tokens_dropped += dropped
        self._tokens_taken += len(rows) * (self.sequence_len + 1) + dropped
        batch = torch.from_numpy(rows[self._first_row:self._first_row + self.batch_size])
        return to_device(batch[:, :-1], batch[:, 1:], device=self.device)

    @property
    def epoch(self) -> int:
        """The pass over the data that the latest document read belongs to (starting at 1)."""
        return self._feed.cursor.epoch

    @property
    def crop_fraction(self) -> float:
        """Fraction of the document tokens taken so far that cropping threw away (0 for stream)."""
        return self._tokens_dropped / self._tokens_taken if self._tokens_taken else 0.0

    def state_dict(self) -> dict:
        """A small JSON-serialisable state from which `load_state_dict` continues exactly."""
        return {
            "version": STATE_VERSION,
            **self._settings,
            "cursor": list(self._feed.cursor),
            "docs": [list(address) for address in self._packer.held()],
            "offset": self._packer.offset,
            "tokens_taken": self._tokens_taken,
            "tokens_dropped": self._tokens_dropped,
        }

    def load_state_dict(self, state: dict) -> None:
        check_state(state, STATE_VERSION, self._settings)
        self._feed.cursor = DocPosition(*state["cursor"])
        self._packer.restore(self._feed.tokenize_at([tuple(address) for address in state["docs"]]), state["offset"])
        self._tokens_taken, self._tokens_dropped = state["tokens_taken"], state["tokens_dropped"]


def make_loader(tokenizer: Tokenizer, corpus_dir: str | Path, split: str = "train", **loader_options) -> TokenLoader:
    """A TokenLoader over a dataset directory: its training shards (all but the last) or the last."""
    return TokenLoader(tokenizer, split_shards(list_shards(corpus_dir), split), **loader_options)
