"""The BPE tokenizer: training, encoding, special tokens, token byte lengths, saving, caching."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from llm.config import compose_run
from llm.data.corpus import build_corpus, read_source, stdlib_sources
from llm.data.tokenizer import (BOS, SHARD_HASHES_FILE, SPECIAL_TOKENS, Tokenizer, ensure_tokenizer, token_bytes,
                                tokenizer_dir)
from llm.train import build

VOCAB = 600
SAMPLE = "Hello world! Numbers: 123, 4567, 89.\nContractions: I'm, you're.\nUnicode: naïve 你好 🌍\n"


@pytest.fixture(scope="module")
def texts():
    return [read_source(path) for path in stdlib_sources()[:30]]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return Tokenizer.train(texts, VOCAB)


def test_vocabulary_layout(tokenizer):
    assert tokenizer.vocab_size == VOCAB
    learned = VOCAB - len(SPECIAL_TOKENS)
    assert [tokenizer.encode_special(name) for name in SPECIAL_TOKENS] == list(range(learned, VOCAB))
    assert tokenizer.bos_id == tokenizer.encode_special("<|bos|>") == learned
    assert len(tokenizer.mergeable_ranks) == learned
    with pytest.raises(ValueError, match="not a special token"):
        tokenizer.encode_special("<|eos|>")


def test_round_trip_and_merges(tokenizer, texts):
    ids = tokenizer.encode(SAMPLE)
    assert tokenizer.decode(ids) == SAMPLE
    assert all(0 <= token < VOCAB - len(SPECIAL_TOKENS) for token in ids)
    # Even 591 learned tokens compress their own training text far below one token per byte.
    source = texts[0]
    assert len(tokenizer.encode(source)) < 0.6 * len(source.encode("utf-8"))


def test_split_pattern_groups_digits_in_pairs(tokenizer):
    pieces = [tokenizer.decode([token]) for token in tokenizer.encode("12345")]
    assert all(len(piece) <= 2 for piece in pieces) and "".join(pieces) == "12345"


def test_specials_in_text_stay_ordinary_and_prepend_append(tokenizer):
    ids = tokenizer.encode(BOS)
    assert tokenizer.bos_id not in ids and tokenizer.decode(ids) == BOS
    wrapped = tokenizer.encode("abc", prepend=BOS, append="<|assistant_end|>")
    assert wrapped[0] == tokenizer.bos_id and wrapped[-1] == tokenizer.encode_special("<|assistant_end|>")
    assert wrapped[1:-1] == tokenizer.encode("abc")
    batch = tokenizer.encode(["abc", SAMPLE, ""], prepend=tokenizer.bos_id, num_threads=2)
    assert batch == [[tokenizer.bos_id] + tokenizer.encode(text) for text in ["abc", SAMPLE, ""]]
    with pytest.raises(ValueError, match="str or a list"):
        tokenizer.encode(123)


def test_token_bytes(tokenizer, texts):
    lengths = token_bytes(tokenizer)
    assert lengths.dtype == torch.int32 and lengths.shape == (VOCAB,)
    assert (lengths[-len(SPECIAL_TOKENS):] == 0).all() and (lengths[:-len(SPECIAL_TOKENS)] > 0).all()
    ascii_text = texts[1].encode("ascii", errors="ignore").decode()
    ids = tokenizer.encode(ascii_text, prepend=BOS)
    assert lengths[ids].sum().item() == len(ascii_text.encode("utf-8"))
    # As in the reference, a lone non-ASCII byte is measured as its replacement character.
    assert lengths[tokenizer.mergeable_ranks[b"\xe4"]].item() == 3
    assert lengths[tokenizer.mergeable_ranks[b"a"]].item() == 1


def test_save_load_identical(tokenizer, tmp_path, texts):
    tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.bos_id == tokenizer.bos_id
    assert loaded.mergeable_ranks == tokenizer.mergeable_ranks
    assert loaded.encode(texts[:5]) == tokenizer.encode(texts[:5])
    with pytest.raises(FileNotFoundError, match="train one first"):
        Tokenizer.load(tmp_path / "missing")


def test_vocab_size_checks(texts):
    with pytest.raises(ValueError, match="at least 265"):
        Tokenizer.train(texts[:1], 264)
    with pytest.raises(ValueError, match="supports only .* train on more text or lower vocab_size"):
        Tokenizer.train(["tiny tiny text"], 400)


def test_ensure_tokenizer_trains_once_on_train_shards(tmp_path, capsys):
    corpus = tmp_path / "data" / "mini"
    build_corpus(stdlib_sources()[:30], corpus, docs_per_shard=100)
    capsys.readouterr()
    first = ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=200_000, text_column="text")
    out = capsys.readouterr().out
    assert "hashing" in out and "training" in out and "characters" in out
    directory = tokenizer_dir(tmp_path, corpus, VOCAB, max_chars=200_000, text_column="text")
    assert directory.parent == tmp_path / "tokenizers" and directory.name.startswith(f"mini-{VOCAB}-")
    assert directory.is_dir()
    second = ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=200_000, text_column="text")
    out = capsys.readouterr().out
    assert "training" not in out and "hashing" not in out  # both the shard hashes and the merges are cached
    assert second.mergeable_ranks == first.mergeable_ranks
    with pytest.raises(ValueError, match="max_chars must be positive"):
        ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=0, text_column="text")


def write_shards(directory, columns: dict[str, list[str]], num_shards: int = 3):
    """A plain parquet corpus (no manifest) with these columns, rows dealt round-robin over the shards."""
    directory.mkdir(parents=True)
    for shard in range(num_shards):
        table = pa.table({name: values[shard::num_shards] for name, values in columns.items()})
        pq.write_table(table, directory / f"part_{shard}.parquet")


def test_tokenizer_trains_on_the_configured_text_column(tmp_path, texts):
    # The "text" column holds the same documents upper-cased: a tokenizer learned from it would
    # compress upper-case text best, one learned from "body" lower-case text.
    corpus = tmp_path / "corpus"
    write_shards(corpus, {"text": [text.upper() for text in texts], "body": texts})
    cfg = compose_run(["data=parquet", f"data.path={corpus}", "data.text_column=body", f"data.vocab_size={VOCAB}",
                       "data.tokenizer_max_chars=10000000"])
    tokenizer = build.tokenizer(cfg.data, build.corpus(cfg, tmp_path), tmp_path)
    sample = texts[-1]  # in the validation shard, which tokenizer training never reads
    assert len(tokenizer.encode(sample)) < 0.8 * len(tokenizer.encode(sample.upper()))
    on_text = ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=10_000_000, text_column="text")
    assert len(on_text.encode(sample.upper())) < 0.8 * len(on_text.encode(sample))


def test_same_named_folders_with_different_content_get_different_tokenizers(tmp_path, texts):
    first, second = tmp_path / "a" / "corpus", tmp_path / "b" / "corpus"
    write_shards(first, {"text": texts})
    write_shards(second, {"text": [text.upper() for text in texts]})
    options = dict(vocab_size=VOCAB, max_chars=10_000_000, text_column="text")
    assert tokenizer_dir(tmp_path, first, **options) != tokenizer_dir(tmp_path, second, **options)
    lower, upper = ensure_tokenizer(tmp_path, first, **options), ensure_tokenizer(tmp_path, second, **options)
    assert lower.mergeable_ranks != upper.mergeable_ranks
    sample = texts[0]
    assert len(lower.encode(sample)) < 0.8 * len(upper.encode(sample))
    # What decides the merges is the training shards' content, the column and the budget: a copy
    # elsewhere under another name with another validation shard trains the same tokenizer ...
    copy = tmp_path / "elsewhere" / "corpus"
    copy.mkdir(parents=True)
    for index, shard in enumerate(sorted(first.iterdir())[:-1]):
        (copy / f"shard_{index}.parquet").write_bytes(shard.read_bytes())
    pq.write_table(pa.table({"text": ["another validation document"]}), copy / "shard_9.parquet")
    assert tokenizer_dir(tmp_path, copy, **options) == tokenizer_dir(tmp_path, first, **options)
    # ... and another budget or column does not.
    assert tokenizer_dir(tmp_path, first, **{**options, "max_chars": 5_000_000}) != tokenizer_dir(tmp_path, first, **options)
    assert tokenizer_dir(tmp_path, first, **{**options, "text_column": "body"}) != tokenizer_dir(tmp_path, first, **options)


def test_a_shard_rewritten_in_place_is_hashed_again(tmp_path, texts):
    corpus = tmp_path / "corpus"
    write_shards(corpus, {"text": texts})
    options = dict(vocab_size=VOCAB, max_chars=10_000_000, text_column="text")
    before = tokenizer_dir(tmp_path, corpus, **options)
    shard = sorted(corpus.iterdir())[0]
    pq.write_table(pa.table({"text": [text.upper() for text in texts[0::3]]}), shard)
    after = tokenizer_dir(tmp_path, corpus, **options)
    assert after != before
    # A damaged hash cache costs only rehashing, and is rewritten whole.
    cache = tmp_path / "tokenizers" / SHARD_HASHES_FILE
    cache.write_text("{not json")
    assert tokenizer_dir(tmp_path, corpus, **options) == after
    assert len(json.loads(cache.read_text())) == 2  # the two training shards
