"""The packing dataloaders: rank order, both packings against independent oracles, exact resume."""

import itertools
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from llm.data.corpus import read_source, stdlib_sources
from llm.data.loader import BestFitPacker, TokenLoader, make_loader
from llm.data.shards import list_shards, split_shards
from llm.data.tokenizer import Tokenizer

B, T = 2, 256
OPTIONS = dict(batch_size=B, sequence_len=T, buffer_size=24, tokenizer_batch_size=8, tokenizer_threads=2)
# (documents, row group size) per shard; the last shard is validation. Uneven on purpose.
LAYOUT = [(30, 6), (23, 4), (27, 6), (12, 3)]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([read_source(path) for path in stdlib_sources()[:20]], 512)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Shards of real text cut into documents of mixed lengths (a few to ~500 tokens)."""
    text = "".join(read_source(path) for path in stdlib_sources()[20:60])
    rng = random.Random(0)
    directory = tmp_path_factory.mktemp("shards")
    position = 0
    for index, (num_docs, row_group_size) in enumerate(LAYOUT):
        docs = []
        for _ in range(num_docs):
            length = rng.choice([rng.randint(10, 100), rng.randint(100, 1200)])
            docs.append(text[position:position + length])
            position += length
        pq.write_table(pa.table({"text": docs}), directory / f"shard_{index:05d}.parquet",
                       row_group_size=row_group_size)
    return directory


def rank_documents(shards, rank, world_size):
    """One epoch of a rank's documents in reading order, per the rule: row groups rank, rank+W, ..."""
    docs = []
    for path in shards:
        parquet = pq.ParquetFile(path)
        for row_group in range(rank, parquet.num_row_groups, world_size):
            docs.extend(parquet.read_row_group(row_group).column("text").to_pylist())
    return docs


def doc_batches(shards, rank, world_size, docs_per_batch):
    """Endless slices of at most docs_per_batch documents, never crossing a row group."""
    while True:
        for path in shards:
            parquet = pq.ParquetFile(path)
            for row_group in range(rank, parquet.num_row_groups, world_size):
                texts = parquet.read_row_group(row_group).column("text").to_pylist()
                for start in range(0, len(texts), docs_per_batch):
                    yield texts[start:start + docs_per_batch]


def stream_oracle(tokenizer, shards, rank, world_size, num_batches):
    epoch = [token for doc in rank_documents(shards, rank, world_size)
             for token in tokenizer.encode(doc, prepend=tokenizer.bos_id)]
    stream = list(itertools.islice(itertools.cycle(epoch), num_batches * B * T + 1))
    return [torch.tensor([stream[k * B * T + b * T:k * B * T + (b + 1) * T + 1] for b in range(B)])
            for k in range(num_batches)]


def bestfit_reference(token_batches, buffer_size, num_rows, capacity):
    """The reference algorithm, scanning a plain list: rows of `capacity` tokens and the tokens dropped."""
    buffer, rows, dropped = [], [], 0
    for _ in range(num_rows):
        row = []
        while len(row) < capacity:
            while len(buffer) < buffer_size:
                buffer += next(token_batches)
            room = capacity - len(row)
            fitting = [i for i, doc in enumerate(buffer) if len(doc) <= room]
            if fitting:  # max() and min() return the first of equals, as the reference does
                row += buffer.pop(max(fitting, key=lambda i: len(buffer[i])))
            else:
                doc = buffer.pop(min(range(len(buffer)), key=lambda i: len(buffer[i])))
                row += doc[:room]
                dropped += len(doc) - room
        rows.append(row)
    return rows, dropped


def bestfit_oracle(tokenizer, shards, rank, world_size, num_batches, buffer_size=OPTIONS["buffer_size"]):
    texts = doc_batches(shards, rank, world_size, OPTIONS["tokenizer_batch_size"])
    token_batches = (tokenizer.encode(batch, prepend=tokenizer.bos_id) for batch in texts)
    rows, _ = bestfit_reference(token_batches, buffer_size, num_batches * B, T + 1)
    return [torch.tensor(rows[k * B:(k + 1) * B]) for k in range(num_batches)]


def take(loader, count):
    return [torch.cat([inputs, targets[:, -1:]], dim=1) for inputs, targets in itertools.islice(loader, count)]


def test_batches_shape_and_shift(tokenizer, dataset):
    for packing in ("bos_bestfit", "stream"):
        loader = make_loader(tokenizer, dataset, packing=packing, **OPTIONS)
        for inputs, targets in itertools.islice(loader, 5):
            assert inputs.shape == targets.shape == (B, T)
            assert inputs.dtype == targets.dtype == torch.long and inputs.device.type == "cpu"
            assert torch.equal(inputs[:, 1:], targets[:, :-1])
            assert 0 <= int(inputs.min()) and int(inputs.max()) < tokenizer.vocab_size


def test_bestfit_matches_the_reference_algorithm(tokenizer, dataset):
    shards = split_shards(list_shards(dataset), "train")
    for rank, world_size in [(0, 1), (1, 2)]:
        loader = TokenLoader(tokenizer, shards, rank=rank, world_size=world_size, **OPTIONS)
        assert all(torch.equal(got, want) for got, want in
                   zip(take(loader, 12), bestfit_oracle(tokenizer, shards, rank, world_size, 12), strict=True))


class SyntheticFeed:
    """Documents of given lengths, in batches of varying size; each document's tokens are distinct."""

    def __init__(self, lengths, batch_sizes):
        self.lengths, self.batch_sizes = lengths, itertools.cycle(batch_sizes)
        self.next_doc = 0

    def token_batches(self):
        while True:
            yield [[index] * length for index, length in self._batch()]

    def next_batch(self):
        return [((0, 0, index), np.full(length, index, dtype=np.int32)) for index, length in self._batch()]

    def _batch(self):
        count = next(self.batch_sizes)
        batch = [(i, self.lengths[i % len(self.lengths)]) for i in range(self.next_doc, self.next_doc + count)]
        self.next_doc += count
        return batch


# Length mixes: many ties, documents longer than a row, one-token documents, heavy tails.
LENGTH_MIXES = {
    "few_distinct": lambda rng: rng.choice([1, 5, 17, 40, 64]),
    "uniform": lambda rng: rng.randint(1, 300),
    "mostly_too_long": lambda rng: rng.randint(60, 2000),
    "heavy_tail": lambda rng: max(1, int(rng.lognormvariate(3.5, 1.2))),
    "tiny": lambda rng: rng.randint(1, 3),
}


@pytest.mark.parametrize("mix", LENGTH_MIXES)
def test_bestfit_packer_equals_the_reference_on_random_length_mixes(mix):
    for seed in range(12):
        rng = random.Random(seed)
        lengths = [LENGTH_MIXES[mix](rng) for _ in range(rng.randint(1, 400))]
        batch_sizes = [rng.randint(1, 40) for _ in range(5)]
        buffer_size, sequence_len = rng.choice([1, 2, 7, 50, 200]), rng.choice([1, 8, 63, 256])
        batch_size, num_batches = rng.randint(1, 4), rng.randint(1, 15)
        packer = BestFitPacker(SyntheticFeed(lengths, batch_sizes), buffer_size)
        got = [packer.next_rows(batch_size, sequence_len) for _ in range(num_batches)]
        want_rows, want_dropped = bestfit_reference(SyntheticFeed(lengths, batch_sizes).token_batches(),
                                                    buffer_size, batch_size * num_batches, sequence_len + 1)
        assert np.array_equal(np.concatenate([rows for rows, _ in got]), np.array(want_rows)), (mix, seed)
        assert sum(dropped for _, dropped in got) == want_dropped


def test_bestfit_rows_are_whole_documents_then_one_crop(tokenizer, dataset):
    shards = split_shards(list_shards(dataset), "train")
    documents = {tuple(tokenizer.encode(doc, prepend=tokenizer.bos_id)) for doc in rank_documents(shards, 0, 1)}
    loader = TokenLoader(tokenizer, shards, **OPTIONS)
    for batch in take(loader, 10):
        assert (batch[:, 0] == tokenizer.bos_id).all()  # every row starts a document: no padding
        for row in batch.tolist():
            starts = [i for i, token in enumerate(row) if token == tokenizer.bos_id] + [len(row)]
            pieces = [tuple(row[a:b]) for a, b in zip(starts, starts[1:])]
            assert all(piece in documents for piece in pieces[:-1])
            assert any(doc[:len(pieces[-1])] == pieces[-1] for doc in documents)
    assert 0.0 < loader.crop_fraction < 0.9


def test_stream_is_the_concatenated_token_stream(tokenizer, dataset):
    shards = split_shards(list_shards(dataset), "train")
    loader = TokenLoader(tokenizer, shards, packing="stream", **OPTIONS)
    got = take(loader, 30)
    assert all(torch.equal(a, b) for a, b in zip(got, stream_oracle(tokenizer, shards, 0, 1, 30), strict=True))
    assert loader.crop_fraction == 0.0
    epoch_tokens = sum(len(tokenizer.encode(d)) + 1 for d in rank_documents(shards, 0, 1))
    assert 30 * B * T > epoch_tokens and loader.epoch == 2  # the stream wrapped into a second epoch


def test_ranks_read_disjoint_row_groups_covering_the_data(tokenizer, dataset):
    shards = split_shards(list_shards(dataset), "train")
    world_size = 3
    per_rank = [rank_documents(shards, rank, world_size) for rank in range(world_size)]
    assert sorted(sum(per_rank, [])) == sorted(rank_documents(shards, 0, 1))  # a partition
    for rank in range(world_size):
        loader = TokenLoader(tokenizer, shards, rank=rank, world_size=world_size, packing="stream", **OPTIONS)
        want = stream_oracle(tokenizer, shards, rank, world_size, 6)
        assert all(torch.equal(a, b) for a, b in zip(take(loader, 6), want, strict=True))


def test_rank_without_row_groups_is_an_error(tokenizer, dataset):
    loader = make_loader(tokenizer, dataset, split="val", rank=5, world_size=6, **OPTIONS)  # val: 4 row groups
    with pytest.raises(ValueError, match="rank 5 of 6 gets no documents.*fewer ranks"):
        next(loader)


def test_val_split_reads_only_the_last_shard(tokenizer, dataset):
    val = list_shards(dataset)[-1:]
    loader = make_loader(tokenizer, dataset, split="val", packing="stream", **OPTIONS)
    assert all(torch.equal(a, b) for a, b in zip(take(loader, 4), stream_oracle(tokenizer, val, 0, 1, 4)))


@pytest.mark.parametrize("packing", ["bos_bestfit", "stream"])
@pytest.mark.parametrize("rank,world_size", [(0, 1), (1, 2)])
def test_resume_is_exact(tokenizer, dataset, packing, rank, world_size):
    shards = split_shards(list_shards(dataset), "train")
    settings = dict(rank=rank, world_size=world_size, packing=packing, **OPTIONS)
    total = 30  # long enough to wrap into a second epoch
    straight = TokenLoader(tokenizer, shards, **settings)
    expected = take(straight, total)
    assert straight.epoch >= 2
    for cut in (0, 1, 9, 23):
        first = TokenLoader(tokenizer, shards, **settings)
        before = take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))
        assert len(json.dumps(state)) < 2_000
        resumed = TokenLoader(tokenizer, shards, **settings)
        resumed.load_state_dict(state)
        assert resumed.epoch == first.epoch and resumed.crop_fraction == first.crop_fraction
        after = take(resumed, total - cut)
        assert all(torch.equal(a, b) for a, b in zip(before + after, expected, strict=True)), f"cut at {cut}"
        assert resumed.state_dict() == straight.state_dict()


def test_state_from_other_settings_is_refused(tokenizer, dataset):
    shards = split_shards(list_shards(dataset), "train")
    state = TokenLoader(tokenizer, shards, **OPTIONS).state_dict()
    for change in [dict(world_size=2), dict(packing="stream"), dict(sequence_len=128)]:
        other = TokenLoader(tokenizer, shards, **{**OPTIONS, **change})
        key = next(iter(change))
        with pytest.raises(ValueError, match=f"saved with {key}=.*same data and loader settings"):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="num_shards"):
        TokenLoader(tokenizer, shards[:2], **OPTIONS).load_state_dict(state)


def test_bad_arguments(tokenizer, dataset):
    shards = list_shards(dataset)
    with pytest.raises(ValueError, match="packing must be one of"):
        TokenLoader(tokenizer, shards, packing="padded", **OPTIONS)
    with pytest.raises(ValueError, match="rank must be in"):
        TokenLoader(tokenizer, shards, rank=2, world_size=2, **OPTIONS)
    with pytest.raises(ValueError, match="sequence_len must be at least 1"):
        TokenLoader(tokenizer, shards, **{**OPTIONS, "sequence_len": 0})
    with pytest.raises(ValueError, match="no column 'body'"):
        next(TokenLoader(tokenizer, shards, text_column="body", **OPTIONS))


@pytest.mark.parametrize("packing", ["bos_bestfit", "stream"])
def test_row_sharding_gives_the_same_global_batches_at_any_world_size(tokenizer, dataset, packing):
    options = {**OPTIONS, "packing": packing, "shard_by": "rows"}
    single = make_loader(tokenizer, dataset, **{**options, "batch_size": 2 * B})
    ranks = [make_loader(tokenizer, dataset, **options, rank=r, world_size=2) for r in range(2)]
    for global_rows in take(single, 6):
        assert torch.equal(global_rows, torch.cat([take(loader, 1)[0] for loader in ranks]))
