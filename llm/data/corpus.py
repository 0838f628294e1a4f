"""The embedded default corpus: the running interpreter's standard-library sources as documents.

Every machine that runs this project has a Python installation, so its standard library is real
text, written by other people, available offline, and large enough (about 34 MB on CPython 3.11)
to train a tokenizer and small models end to end without downloading anything.

Document rule. Each source file is cut before every top-level definition (a line starting at
column 0 with `def`, `async def`, `class`, or the first of a run of `@decorator` lines). Consecutive
pieces are then joined until a document holds at least MIN_DOC_CHARS characters, a short tail is
joined to the document before it, and any document longer than MAX_DOC_CHARS is cut at its last
blank line (else last newline) before that limit. The result resembles web pages in length: mostly
one to a few thousand characters, some short files whole.

Layout (the same as the real dataset's): documents shuffled with a fixed seed, written as
`shard_00000.parquet`, ... with one `text` column; the last shard is the validation split. Every
shard has ROW_GROUPS_PER_SHARD row groups, the unit that ranks divide among themselves, so up to
that many ranks each get a share of every shard. `manifest.json` records where the text came
from and a sha256 per shard. With the same Python and pyarrow versions the bytes are identical.
"""

import hashlib
import io
import json
import math
import platform
import random
import re
import sys
import sysconfig
import time
import tokenize
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from llm.data.paths import exclusive_lock, publish_directory

BUILDER_VERSION = 1
MIN_DOC_CHARS = 1_500
MAX_DOC_CHARS = 8_000
DOCS_PER_TRAIN_SHARD = 2_048
ROW_GROUPS_PER_SHARD = 16
VAL_FRACTION = 0.04
SHUFFLE_SEED = 42
MANIFEST = "manifest.json"

# Pinned so that equal inputs give equal bytes; the writer stamps only its own version, no time.
PARQUET_OPTIONS = dict(
    version="2.6", compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False
)

_DEFINITION_START = re.compile(r"(?:def |async def |class |@)")


def corpus_dir(base: Path) -> Path:
    """Where the embedded corpus of this interpreter lives under the base directory."""
    return Path(base) / "data" / f"embedded-py{sys.version_info.major}.{sys.version_info.minor}"


def stdlib_sources() -> list[Path]:
    """The standard library's .py files, sorted; installed packages and build-machine files excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if parts[0] in ("site-packages", "dist-packages") or parts[0].startswith("config-"):
            continue
        if path.name.startswith("_sysconfigdata"):  # generated per build; holds its install paths
            continue
        sources.append(path)
    return sorted(sources)


def read_source(path: Path) -> str:
    """A file's text in its declared encoding; undecodable bytes become U+FFFD."""
    raw = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError:  # a deliberately broken coding cookie (the stdlib's own tokenizer tests)
        encoding = "utf-8"
    return raw.decode(encoding, errors="replace")


def _definition_pieces(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    pieces, current = [], []
    for index, line in enumerate(lines):
        follows_decorator = index > 0 and lines[index - 1].startswith("@")
        if current and _DEFINITION_START.match(line) and not follows_decorator:
            pieces.append("".join(current))
            current = []
        current.append(line)
    if current:
        pieces.append("".join(current))
    return pieces


def _cut_to_limit(document: str) -> list[str]:
    parts = []
    while len(document) > MAX_DOC_CHARS:
        window = document[:MAX_DOC_CHARS]
        cut = window.rfind("\n\n") + 2
        if cut < 2:
            cut = window.rfind("\n") + 1
        if cut < 1:
            cut = MAX_DOC_CHARS
        parts.append(document[:cut])
        document = document[cut:]
    return parts + [document]


def split_documents(text: str) -> list[str]:
    """Cut one source file into documents by the rule in the module docstring."""
    documents: list[str] = []
    current = ""
    for piece in _definition_pieces(text):
        current += piece
        if len(current) >= MIN_DOC_CHARS:
            documents.append(current)
            current = ""
    if current:
        if documents:
            documents[-1] += current
        else:
            documents.append(current)
    return [part for document in documents for part in _cut_to_limit(document) if part.strip()]


def _write_shard(documents: list[str], path: Path) -> dict:
    row_group_size = max(1, math.ceil(len(documents) / ROW_GROUPS_PER_SHARD))
    table = pa.table({"text": pa.array(documents, type=pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size, **PARQUET_OPTIONS)
    data = path.read_bytes()
    return {
        "name": path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "documents": len(documents),
        "characters": sum(len(document) for document in documents),
        "row_groups": pq.ParquetFile(path).metadata.num_row_groups,
    }


def build_corpus(sources: Sequence[Path], out_dir: Path, docs_per_shard: int = DOCS_PER_TRAIN_SHARD) -> dict:
    """Write the documents of `sources` as shards plus manifest into `out_dir`; returns the manifest."""
    started = time.time()
    documents = []
    for count, path in enumerate(sources, start=1):
        documents.extend(split_documents(read_source(Path(path))))
        if count % 500 == 0 or count == len(sources):
            print(f"corpus: read {count}/{len(sources)} files, {len(documents):,} documents")
    if len(documents) < 2:
        raise ValueError(f"{len(sources)} source files gave {len(documents)} documents; a corpus needs at least 2")
    random.Random(SHUFFLE_SEED).shuffle(documents)

    num_val = max(1, round(VAL_FRACTION * len(documents)))
    train, val = documents[:-num_val], documents[-num_val:]
    groups = [train[start : start + docs_per_shard] for start in range(0, len(train), docs_per_shard)] + [val]
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, group in enumerate(groups):
        shards.append(_write_shard(group, out_dir / f"shard_{index:05d}.parquet"))
        print(f"corpus: wrote {shards[-1]['name']} ({len(group):,} documents)")

    manifest = {
        "builder_version": BUILDER_VERSION,
        "source": "CPython standard library (.py files)",
        "python_version": platform.python_version(),
        "pyarrow_version": pa.__version__,
        "source_files": len(sources),
        "rule": {"min_doc_chars": MIN_DOC_CHARS, "max_doc_chars": MAX_DOC_CHARS, "val_fraction": VAL_FRACTION,
                 "shuffle_seed": SHUFFLE_SEED, "row_groups_per_shard": ROW_GROUPS_PER_SHARD},
        "documents": len(documents),
        "characters": sum(shard["characters"] for shard in shards),
        "validation_shard": shards[-1]["name"],
        "shards": shards,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"corpus: {len(documents):,} documents, {manifest['characters']:,} characters "
          f"in {len(shards)} shards ({time.time() - started:.1f}s)")
    return manifest


def verify_corpus(directory: Path, check_hashes: bool = False) -> dict:
    """Check every shard against the manifest (sizes always, sha256 when asked); returns the manifest."""
    fix = f"delete {directory} to rebuild it"
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"corpus manifest unreadable ({error}); {fix}") from None
    if manifest.get("builder_version") != BUILDER_VERSION:
        raise ValueError(f"corpus in {directory} was built by builder version "
                         f"{manifest.get('builder_version')}, this is version {BUILDER_VERSION}; {fix}")
    for shard in manifest["shards"]:
        path = directory / shard["name"]
        if not path.is_file():
            raise FileNotFoundError(f"corpus shard {path} is missing; {fix}")
        if path.stat().st_size != shard["bytes"]:
            raise ValueError(f"corpus shard {path} has the wrong size (corrupt); {fix}")
        if check_hashes and hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
            raise ValueError(f"corpus shard {path} fails its sha256 check (corrupt); {fix}")
    return manifest


def ensure_embedded_corpus(base: Path, sources: Sequence[Path] | None = None) -> Path:
    """The embedded corpus directory under `base`, built on first use and size-checked after.

    `sources` replaces the standard library as input; it exists so that tests can build small
    corpora, and it is ignored once the directory exists.
    """
    target = corpus_dir(base)
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        if not target.exists():
            print(f"corpus: building the embedded corpus in {target} (once)")
            with publish_directory(target) as staging:
                build_corpus(stdlib_sources() if sources is None else sources, staging)
    verify_corpus(target)
    return target
