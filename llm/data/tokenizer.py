"""GPT-4-style byte-level BPE tokenizer: trained with rustbpe, run with tiktoken.

rustbpe learns the merges fast from a stream of text; tiktoken applies them fast. The learned
merges fill ids 0 .. V-10 and the nine special tokens the chat format needs take the last ids.
"""

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import rustbpe
import tiktoken
import torch

from llm.data.conversation import ASSISTANT_START, CHAT_TOKENS, conversation_segments, without_last_reply
from llm.data.paths import exclusive_lock, publish_directory
from llm.data.shards import ShardReader, list_shards, split_shards

BOS = "<|bos|>"
# BOS opens every document; the others delimit the turns and tool calls of the chat format.
SPECIAL_TOKENS = [BOS, *CHAT_TOKENS]
# GPT-4's split pattern except that numbers split into runs of at most two digits (not three),
# which spends fewer vocabulary entries on numbers at small vocabulary sizes.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, then the specials
DOC_CAP_CHARS = 10_000  # tokenizer training sees at most this much of each document
# More threads than cores only adds contention; the reference's 8 is the ceiling.
DEFAULT_THREADS = min(8, os.cpu_count() or 1)
MERGES_FILE = "merges.tiktoken"
CONFIG_FILE = "tokenizer.json"
SHARD_HASHES_FILE = "shard_hashes.json"  # under <base>/tokenizers, shared by all corpora


class Tokenizer:
    """Learned merges run by tiktoken, with this project's split pattern and special tokens."""

    def __init__(self, mergeable_ranks: dict[bytes, int], name: str = "llm"):
        self.mergeable_ranks = mergeable_ranks
        specials = {token: len(mergeable_ranks) + index for index, token in enumerate(SPECIAL_TOKENS)}
        self.encoding = tiktoken.Encoding(name, pat_str=SPLIT_PATTERN, mergeable_ranks=mergeable_ranks,
                                          special_tokens=specials)
        self.bos_id = self.encode_special(BOS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, name: str = "llm") -> "Tokenizer":
        """Learn `vocab_size - 9` byte-level tokens from `texts` and add the special tokens."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + "
                             f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
        learned_size = vocab_size - len(SPECIAL_TOKENS)
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), learned_size, pattern=SPLIT_PATTERN)
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        if len(ranks) < learned_size:
            # rustbpe stops quietly when no pair occurs twice any more.
            raise ValueError(f"the training text supports only {len(ranks) + len(SPECIAL_TOKENS)} tokens, "
                             f"not the requested {vocab_size}; train on more text or lower vocab_size")
        return cls(ranks, name)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode_special(self, name: str) -> int:
        if name not in self.encoding.special_tokens_set:
            raise ValueError(f"{name!r} is not a special token; use one of {SPECIAL_TOKENS}")
        return self.encoding.encode_single_token(name)

    def encode(self, text: str | Sequence[str], prepend: int | str | None = None, append: int | str | None = None,
               num_threads: int = DEFAULT_THREADS) -> list[int] | list[list[int]]:
        """Token ids of one text, or a list of id lists for a list of texts (encoded in parallel).

        Special-token strings inside the text are encoded as ordinary text; `prepend` and
        `append` add one token (an id, or a special token's name) around each text.
        """
        before = [] if prepend is None else [self._token_id(prepend)]
        after = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return before + self.encoding.encode_ordinary(text) + after
        if not isinstance(text, (list, tuple)):
            raise ValueError(f"encode takes a str or a list of str, got {type(text).__name__}")
        batch = self.encoding.encode_ordinary_batch(list(text), num_threads=num_threads)
        return [before + ids + after for ids in batch]

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))

    def render_conversation(self, conversation: dict, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """(ids, mask) of a chat conversation (format: llm/data/conversation.py), cut to `max_tokens`.

        mask is 1 on the tokens fine-tuning trains on (what the assistant writes) and 0 elsewhere.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        ids, mask = [self.bos_id], [0]
        for segment in conversation_segments(conversation):
            tokens = [self.encode_special(segment.text)] if segment.special else self.encode(segment.text)
            ids += tokens
            mask += [int(segment.supervised)] * len(tokens)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: dict) -> list[int]:
        """The ids that prompt the model for the conversation's final assistant message, without it:
        the rest rendered (cut to 2048 tokens, as for training), then <|assistant_start|>."""
        ids, _ = self.render_conversation(without_last_reply(conversation))
        return ids + [self.encode_special(ASSISTANT_START)]

    def _token_id(self, token: int | str) -> int:
        return token if isinstance(token, int) else self.encode_special(token)

    def save(self, directory: Path) -> None:
        """Write the merges in tiktoken's text format (base64 token, rank) and a JSON description."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / MERGES_FILE, "wb") as handle:
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1]):
                handle.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
        # The pattern and specials are constants of this module; they are written for readers and
        # checked on load, so a tokenizer saved under other conventions is not silently misused.
        config = {"name": self.encoding.name, "vocab_size": self.vocab_size, "pattern": SPLIT_PATTERN,
                  "special_tokens": SPECIAL_TOKENS}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "Tokenizer":
        directory = Path(directory)
        if not (directory / MERGES_FILE).is_file() or not (directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"no saved tokenizer in {directory}; train one first (ensure_tokenizer)")
        config = json.loads((directory / CONFIG_FILE).read_text())
        if config["pattern"] != SPLIT_PATTERN or config["special_tokens"] != SPECIAL_TOKENS:
            raise ValueError(f"the tokenizer in {directory} uses another split pattern or special tokens; "
                             "delete it to retrain")
        ranks = {}
        for line in (directory / MERGES_FILE).read_bytes().splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        return cls(ranks, config["name"])


def token_bytes(tokenizer: Tokenizer) -> torch.Tensor:
    """UTF-8 length of each token's text (int32, by id), 0 for special tokens: the bits-per-byte weights.

    As in the reference, a token is measured by decoding it alone, so a token holding part of a
    multi-byte character counts its replacement character (3 bytes), not its raw byte count.
    """
    specials = tokenizer.encoding.special_tokens_set
    lengths = []
    for token_id in range(tokenizer.vocab_size):
        text = tokenizer.decode([token_id])
        lengths.append(0 if text in specials else len(text.encode("utf-8")))
    return torch.tensor(lengths, dtype=torch.int32)


def _training_texts(corpus_dir: Path, max_chars: int, text_column: str) -> Iterator[str]:
    reader = ShardReader(split_shards(list_shards(corpus_dir), "train"), text_column)
    started = last_report = time.time()
    chars = 0
    for text in reader.iter_texts():
        text = text[:DOC_CAP_CHARS]
        chars += len(text)
        yield text
        if time.time() - last_report > 10:
            last_report = time.time()
            print(f"tokenizer: read {chars:,} characters ({last_report - started:.0f}s)")
        if chars > max_chars:
            break
    print(f"tokenizer: read {chars:,} characters in total ({time.time() - started:.0f}s)")


def _shard_hashes(shards: list[Path], cache_file: Path) -> list[str]:
    """The sha256 of each shard; a file whose size and mtime are as recorded keeps its recorded hash.

    Hashing a downloaded corpus of many gigabytes takes minutes, so the digests are remembered in
    `cache_file`, keyed by absolute path. Rewriting a file changes its mtime, so it is hashed again.
    """
    with exclusive_lock(cache_file.with_name(f".{cache_file.name}.lock")):
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):  # no cache yet, or a damaged one: it only costs rehashing
            cache = {}
        keys = [str(path.resolve()) for path in shards]
        stats = [[path.stat().st_size, path.stat().st_mtime_ns] for path in shards]
        stale = [index for index, (key, stat) in enumerate(zip(keys, stats)) if cache.get(key, [])[:2] != stat]
        if stale:
            print(f"tokenizer: hashing {len(stale)} shards of {shards[0].parent} (once)")
            for index in stale:
                with open(shards[index], "rb") as handle:
                    cache[keys[index]] = stats[index] + [hashlib.file_digest(handle, "sha256").hexdigest()]
            staging = cache_file.with_name(f".{cache_file.name}.partial")
            staging.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            os.replace(staging, cache_file)
    return [cache[key][2] for key in keys]


def tokenizer_dir(base: Path, corpus_dir: Path, vocab_size: int, max_chars: int, text_column: str) -> Path:
    """Where the tokenizer trained on this corpus's training shards with these settings is cached.

    The name is the corpus folder's (for people) plus a digest of everything that decides the
    merges: the training shards' contents in order, the text column and the character budget. Two
    corpora in same-named folders thus get their own tokenizers, while the validation shard, file
    names and location do not matter.
    """
    tokenizers = Path(base) / "tokenizers"
    shards = split_shards(list_shards(corpus_dir), "train")
    identity = {"train_shards_sha256": _shard_hashes(shards, tokenizers / SHARD_HASHES_FILE),
                "text_column": text_column, "max_chars": max_chars}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return tokenizers / f"{Path(corpus_dir).name}-{vocab_size}-{digest}"


def ensure_tokenizer(base: Path, corpus_dir: Path, vocab_size: int, max_chars: int, text_column: str) -> Tokenizer:
    """The tokenizer for this corpus and vocabulary size, trained on the `text_column` of its training
    shards on first use.

    Training reads at most about `max_chars` characters, each document capped at DOC_CAP_CHARS.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    target = tokenizer_dir(base, corpus_dir, vocab_size, max_chars, text_column)
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        if not target.exists():
            print(f"tokenizer: training a {vocab_size:,}-token tokenizer on {corpus_dir}")
            started = time.time()
            tokenizer = Tokenizer.train(_training_texts(Path(corpus_dir), max_chars, text_column), vocab_size,
                                        name=target.name)
            print(f"tokenizer: trained in {time.time() - started:.1f}s, saved to {target}")
            with publish_directory(target) as staging:
                tokenizer.save(staging)
            return tokenizer
    return Tokenizer.load(target)
