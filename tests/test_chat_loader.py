"""The chat-stage loaders: midtraining packing against a plain oracle, its epoch's step count, SFT
padding and masking built by hand, exact resume, rank sharding, and the refusals."""

import json
import random

import pytest
import torch

from llm.data.chat_loader import MidtrainLoader, SFTLoader, conversation_lengths, midtrain_epoch_steps
from llm.data.corpus import read_source, stdlib_sources
from llm.data.tokenizer import Tokenizer

T = 64  # sequence_len: small, so some conversations are longer than a row and get cut


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([read_source(path) for path in stdlib_sources()[:20]], 512)


def make_conversations(count: int, seed: int = 0) -> list[dict]:
    """Conversations of mixed lengths (a few tokens to past T), some with calculator parts."""
    words = read_source(stdlib_sources()[40]).split()
    rng = random.Random(seed)

    def text(low, high):
        start = rng.randrange(len(words) - high)
        return " ".join(words[start:start + rng.randint(low, high)])

    conversations = []
    for index in range(count):
        reply = text(20, 40) if index % 7 == 6 else text(1, 8)
        if index % 4 == 3:
            reply = [{"type": "text", "text": reply}, {"type": "python", "text": "6*7"},
                     {"type": "python_output", "text": "42"}, {"type": "text", "text": text(1, 5)}]
        messages = [{"role": "user", "content": f"conversation {index}: {text(0, 6)}"},
                    {"role": "assistant", "content": reply}]
        if index % 5 == 0:
            messages += [{"role": "user", "content": text(1, 4)}, {"role": "assistant", "content": text(1, 4)}]
        conversations.append({"messages": messages})
    return conversations


class RecordingDataset:
    """A list of conversations that records which indices were read."""

    def __init__(self, conversations):
        self.conversations, self.reads = conversations, []

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.conversations[index]


def midtrain_oracle(tok, conversations, rank, world_size, batch_size, buffer_size, num_batches):
    """The reference's algorithm written plainly: (rows, epoch, epoch_done) per batch."""
    cursor, epoch, consumed = rank, 1, rank
    buffer, batches = [], []
    for _ in range(num_batches):
        rows = []
        for _ in range(batch_size):
            row = []
            while len(row) < T + 1:
                while len(buffer) < buffer_size:
                    buffer.append(tok.render_conversation(conversations[cursor], max_tokens=T)[0])
                    cursor += world_size
                    if cursor >= len(conversations):
                        cursor, epoch = cursor % len(conversations), epoch + 1
                room = T + 1 - len(row)
                fitting = [i for i, ids in enumerate(buffer) if len(ids) <= room]
                if fitting:
                    longest = max(len(buffer[i]) for i in fitting)
                    row += buffer.pop(next(i for i in fitting if len(buffer[i]) == longest))
                else:
                    row += buffer.pop(0)[:room]
                consumed += world_size
            rows.append(row)
        batches.append((torch.tensor(rows), epoch, consumed >= len(conversations)))
    return batches


def take(loader, count):
    return [next(loader) for _ in range(count)]


@pytest.mark.parametrize("rank,world_size,batch_size,buffer_size", [(0, 1, 2, 5), (1, 2, 3, 4), (2, 3, 1, 100)])
def test_midtrain_packing_matches_the_reference_algorithm(tok, rank, world_size, batch_size, buffer_size):
    conversations = make_conversations(45)
    loader = MidtrainLoader(tok, conversations, batch_size, T, rank=rank, world_size=world_size,
                            buffer_size=buffer_size)
    oracle = midtrain_oracle(tok, conversations, rank, world_size, batch_size, buffer_size, 30)
    epochs = set()
    for (inputs, targets), (rows, epoch, done) in zip(loader, oracle):
        assert inputs.dtype == targets.dtype == torch.long and inputs.shape == (batch_size, T)
        assert torch.equal(inputs, rows[:, :-1]) and torch.equal(targets, rows[:, 1:])
        assert (loader.epoch, loader.epoch_done) == (epoch, done)
        epochs.add(epoch)
    assert len(epochs) > 1  # the run read across the end of a pass
    assert (rows[:, 0] == tok.bos_id).all()


def test_midtrain_trains_on_every_token_including_the_user_turns(tok):
    conversations = make_conversations(10)
    inputs, targets = next(MidtrainLoader(tok, conversations, 2, T, buffer_size=3))
    assert (targets >= 0).all()
    user_start = tok.encode_special("<|user_start|>")
    assert (targets == user_start).any()


def reference_loop_steps(loaders, grad_accum_steps):
    """Optimizer steps the reference's loop runs: one micro-batch fetched ahead, the flag of any
    rank checked before each step."""
    for loader in loaders:
        next(loader)
    steps = 0
    while not any(loader.epoch_done for loader in loaders):
        for _ in range(grad_accum_steps):
            for loader in loaders:
                next(loader)
        steps += 1
    return steps


@pytest.mark.parametrize("count,batch_size,grad_accum_steps,world_size,buffer_size",
                         [(60, 2, 1, 1, 5), (60, 1, 3, 2, 4), (61, 2, 2, 3, 8), (50, 1, 4, 1, 100), (7, 1, 1, 2, 3)])
def test_epoch_step_count_equals_the_steps_the_loaders_run(tok, count, batch_size, grad_accum_steps, world_size,
                                                           buffer_size):
    conversations = make_conversations(count)
    loaders = [MidtrainLoader(tok, conversations, batch_size, T, rank=rank, world_size=world_size,
                              buffer_size=buffer_size) for rank in range(world_size)]
    expected = reference_loop_steps(loaders, grad_accum_steps)
    lengths = conversation_lengths(tok, conversations, T)
    assert expected > 0
    assert midtrain_epoch_steps(lengths, batch_size, T, grad_accum_steps, world_size, buffer_size) == expected


def test_epoch_too_small_for_one_step_is_refused(tok):
    lengths = conversation_lengths(tok, make_conversations(3), T)
    with pytest.raises(ValueError, match="no optimizer step"):
        midtrain_epoch_steps(lengths, batch_size=8, sequence_len=T, grad_accum_steps=1, world_size=1)


def assert_resumes_exactly(make_loader, before: int, after: int):
    original = make_loader()
    take(original, before)
    state = json.loads(json.dumps(original.state_dict()))
    resumed = make_loader()
    resumed.load_state_dict(state)
    assert resumed.epoch == original.epoch
    for (x1, y1), (x2, y2) in zip(take(original, after), take(resumed, after)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("rank,world_size,before", [(0, 1, 3), (1, 2, 7), (0, 3, 12)])
def test_midtrain_resume_is_exact(tok, rank, world_size, before):
    conversations = make_conversations(40)
    assert_resumes_exactly(lambda: MidtrainLoader(tok, conversations, 2, T, rank=rank, world_size=world_size,
                                                  buffer_size=6), before, 8)


@pytest.mark.parametrize("rank,world_size,before", [(0, 1, 3), (1, 2, 7), (2, 3, 5)])
def test_sft_resume_is_exact(tok, rank, world_size, before):
    conversations = make_conversations(23)
    assert_resumes_exactly(lambda: SFTLoader(tok, conversations, 3, T, rank=rank, world_size=world_size),
                           before, 6)


def test_two_ranks_read_disjoint_conversations_covering_the_epoch(tok):
    conversations = make_conversations(31)
    mid = [RecordingDataset(conversations) for _ in range(2)]
    loaders = [MidtrainLoader(tok, mid[rank], 1, T, rank=rank, world_size=2, buffer_size=4) for rank in range(2)]
    while not all(loader.epoch_done for loader in loaders):
        for loader in loaders:
            next(loader)
    first_pass = [dataset.reads[:len(range(rank, 31, 2))] for rank, dataset in enumerate(mid)]
    assert first_pass == [list(range(0, 31, 2)), list(range(1, 31, 2))]

    sft = [RecordingDataset(conversations) for _ in range(2)]
    for rank in range(2):
        loader = SFTLoader(tok, sft[rank], 3, T, rank=rank, world_size=2)
        while loader.epoch == 1:
            next(loader)
        next(loader)
    epoch_reads = [dataset.reads[:len(range(rank, 31, 2))] for rank, dataset in enumerate(sft)]
    assert not set(epoch_reads[0]) & set(epoch_reads[1])
    assert sorted(epoch_reads[0] + epoch_reads[1]) == list(range(31))
    assert sft[1].reads[15:18] == [1, 3, 5]  # rank 1's 15 conversations, then its list again


def test_sft_pads_and_masks_as_built_by_hand(tok):
    ids = {name: tok.encode_special(f"<|{name}|>") for name in
           ["bos", "user_start", "user_end", "assistant_start", "assistant_end", "python_start", "python_end",
            "output_start", "output_end"]}
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    tool = {"messages": [{"role": "user", "content": "what is six times seven?"},
                         {"role": "assistant", "content": [{"type": "python", "text": "6*7"},
                                                           {"type": "python_output", "text": "42"},
                                                           {"type": "text", "text": "It is 42."}]}]}
    # Each rendering as (token, supervised) pieces, in order.
    user = lambda text: [(ids["user_start"], 0), *[(t, 0) for t in tok.encode(text)], (ids["user_end"], 0)]
    short_pieces = [(ids["bos"], 0), *user("hi"), (ids["assistant_start"], 0),
                    *[(t, 1) for t in tok.encode("hello there")], (ids["assistant_end"], 1)]
    tool_pieces = [(ids["bos"], 0), *user("what is six times seven?"), (ids["assistant_start"], 0),
                   (ids["python_start"], 1), *[(t, 1) for t in tok.encode("6*7")], (ids["python_end"], 1),
                   (ids["output_start"], 0), *[(t, 0) for t in tok.encode("42")], (ids["output_end"], 0),
                   *[(t, 1) for t in tok.encode("It is 42.")], (ids["assistant_end"], 1)]
    assert len(short_pieces) < len(tool_pieces)
    width = len(tool_pieces) - 1
    expected_inputs, expected_targets = [], []
    for pieces in (short_pieces, tool_pieces):
        pad = width - (len(pieces) - 1)
        expected_inputs.append([token for token, _ in pieces[:-1]] + [ids["assistant_end"]] * pad)
        expected_targets.append([token if supervised else -1 for token, supervised in pieces[1:]] + [-1] * pad)
    loader = SFTLoader(tok, [short, tool], batch_size=2, sequence_len=T)
    inputs, targets = next(loader)
    assert inputs.tolist() == expected_inputs and targets.tolist() == expected_targets
    assert inputs.dtype == targets.dtype == torch.long
    assert loader.supervised_tokens == sum(supervised for pieces in (short_pieces, tool_pieces)
                                           for _, supervised in pieces[1:])


def test_sft_cuts_conversations_at_sequence_len(tok):
    long = {"messages": [{"role": "user", "content": " ".join(["word"] * 200)}, {"role": "assistant", "content": "ok"}]}
    inputs, targets = next(SFTLoader(tok, [long], batch_size=1, sequence_len=T))
    assert inputs.shape == (1, T - 1)
    assert (targets == -1).all()  # the cut kept only the user turn: nothing to supervise


def test_validation_loaders_start_over_each_time_and_wrap(tok):
    conversations = make_conversations(6)
    for make in (lambda: MidtrainLoader(tok, conversations, 2, T, buffer_size=3),
                 lambda: SFTLoader(tok, conversations, 4, T)):
        first, second = take(make(), 5), take(make(), 5)  # 5 batches need more than the 6 conversations
        for (x1, y1), (x2, y2) in zip(first, second):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("make", [
    lambda tok, data: MidtrainLoader(tok, data, 2, T),
    lambda tok, data: SFTLoader(tok, data, 2, T),
    lambda tok, data: midtrain_epoch_steps(data, 2, T, grad_accum_steps=1, world_size=1),
])
def test_an_empty_mixture_is_refused(tok, make):
    with pytest.raises(ValueError, match="no rows; give the stage at least one task"):
        make(tok, [])


def test_bad_settings_and_foreign_states_are_refused(tok):
    conversations = make_conversations(5)
    with pytest.raises(ValueError, match="some rank gets none"):
        SFTLoader(tok, conversations, 1, T, rank=0, world_size=6)
    with pytest.raises(ValueError, match="rank must be in"):
        MidtrainLoader(tok, conversations, 1, T, rank=2, world_size=2)
    with pytest.raises(ValueError, match="buffer_size must be at least 1"):
        MidtrainLoader(tok, conversations, 1, T, buffer_size=0)
    mid_state = MidtrainLoader(tok, conversations, 2, T).state_dict()
    with pytest.raises(ValueError, match="loader='midtrain'"):
        SFTLoader(tok, conversations, 2, T).load_state_dict(mid_state)
    with pytest.raises(ValueError, match="batch_size=2"):
        MidtrainLoader(tok, conversations, 3, T).load_state_dict(mid_state)
