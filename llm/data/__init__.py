"""Data: corpora as parquet shards, the BPE tokenizer, and the packing dataloaders.

A dataset is a directory of parquet shards whose last shard is the validation split. Three sources
produce one: the embedded corpus (the Python standard library, built offline on first use),
FineWeb-Edu (the reference's dataset, downloaded), or any directory of shards the user points at.
All of it lives under `base_dir()`, never in the repository.
"""

from llm.data.corpus import ensure_embedded_corpus, verify_corpus
from llm.data.fineweb import download_fineweb_edu
from llm.data.loader import PACKINGS, TokenLoader, make_loader
from llm.data.paths import base_dir
from llm.data.shards import list_shards, split_shards
from llm.data.tokenizer import Tokenizer, ensure_tokenizer, token_bytes

__all__ = [
    "PACKINGS",
    "TokenLoader",
    "Tokenizer",
    "base_dir",
    "download_fineweb_edu",
    "ensure_embedded_corpus",
    "ensure_tokenizer",
    "list_shards",
    "make_loader",
    "split_shards",
    "token_bytes",
    "verify_corpus",
]
