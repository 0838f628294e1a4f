"""The BPE tokenizer: training, encoding, special tokens, token byte lengths, saving, caching."""

import pytest
import torch

from llm.data.corpus import build_corpus, read_source, stdlib_sources
from llm.data.tokenizer import BOS, SPECIAL_TOKENS, Tokenizer, ensure_tokenizer, token_bytes, tokenizer_dir

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
    first = ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=200_000)
    out = capsys.readouterr().out
    assert "training" in out and "characters" in out
    directory = tokenizer_dir(tmp_path, corpus, VOCAB)
    assert directory == tmp_path / "tokenizers" / f"mini-{VOCAB}" and directory.is_dir()
    second = ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=200_000)
    assert "training" not in capsys.readouterr().out
    assert second.mergeable_ranks == first.mergeable_ranks
    with pytest.raises(ValueError, match="max_chars must be positive"):
        ensure_tokenizer(tmp_path, corpus, VOCAB, max_chars=0)
