"""Batches for the chat stages: midtraining packs whole conversations into rows, SFT pads them.

Both take any indexable sequence of conversations (`len(ds)`, `ds[i]` -> a conversation dict,
format in llm/data/conversation.py) and render each with `Tokenizer.render_conversation`, cut to
`sequence_len` tokens: the reference cuts at 2048, its sequence length, and tying the cut to the
model's length keeps SFT rows (at most sequence_len - 1 inputs) inside a smaller model's context.

- Midtraining (MidtrainLoader): rows of sequence_len + 1 tokens, each starting at a conversation's
  BOS, filled by best-fit from a buffer of `buffer_size` conversations; when none fits, the oldest
  buffered one is cropped to fill the row (llm.data.bestfit). Every token is trained on (the
  assistant mask is not applied, as in the reference). Rank r of W reads positions r, r+W, r+2W, ...
  of the dataset repeated endlessly (position p is conversation p mod N), and one epoch ends once
  the conversations a rank has put into rows reach the dataset's size, counted as the reference
  does: rank + W * used >= N. `midtrain_epoch_steps` computes in advance how many optimizer steps
  that is, by running the same packing decisions over the conversation lengths.
- SFT (SFTLoader): `batch_size` conversations per batch, rank r taking conversations r, r+W, ...
  and starting its list over each epoch; padded to the longest in the batch with
  <|assistant_end|>; targets are -1 where the mask is 0 (only what the assistant writes is
  trained on) and on padding.

Resuming is exact: a state holds how many conversations the rank has read and, for midtraining,
the positions of those still buffered (re-rendered on load). A validation loader is a fresh
loader over the validation conversations, made for each evaluation: it starts from the first
conversation every time and wraps around if asked for more batches than the data holds.
"""

from typing import Sequence

import numpy as np
import torch

from llm.data.bestfit import BestFitBuffer
from llm.data.conversation import ASSISTANT_END
from llm.data.loader import BestFitPacker, TokenizedDoc, check_positive, check_state, to_device
from llm.data.tokenizer import Tokenizer

MIDTRAIN_CROP = "oldest"  # the reference crops the first conversation in its buffer
IGNORE = -1  # the target the loss skips
STATE_VERSION = 1


def check_conversations(conversations: Sequence, rank: int, world_size: int) -> None:
    """Refuse an empty dataset, and a rank that would get no conversations."""
    if len(conversations) == 0:
        raise ValueError("the conversation mixture has no rows; give the stage at least one task with conversations")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if world_size > len(conversations):
        raise ValueError(f"{world_size} ranks share only {len(conversations)} conversations, so some rank gets "
                         "none; use fewer ranks or more conversations")


def render(tokenizer: Tokenizer, conversation: dict, sequence_len: int) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation as the chat loaders train on it: cut to sequence_len tokens."""
    return tokenizer.render_conversation(conversation, max_tokens=sequence_len)


def conversation_lengths(tokenizer: Tokenizer, conversations: Sequence, sequence_len: int) -> list[int]:
    """The rendered length of every conversation, by index: what `midtrain_epoch_steps` needs."""
    return [len(render(tokenizer, conversations[index], sequence_len)[0]) for index in range(len(conversations))]


class _ConversationFeed:
    """A rank's midtraining conversations, rendered one at a time (the packer's feed).

    The rank's j-th read is position rank + W*j of the dataset repeated endlessly; a position is
    the conversation's address in the packer and the loader's state.
    """

    def __init__(self, tokenizer: Tokenizer, conversations: Sequence, sequence_len: int, rank: int,
                 world_size: int):
        self.tokenizer, self.conversations, self.sequence_len = tokenizer, conversations, sequence_len
        self.rank, self.world_size = rank, world_size
        self.fetched = 0  # conversations read so far

    def position(self, reads: int) -> int:
        return self.rank + self.world_size * reads

    def next_batch(self) -> list[TokenizedDoc]:
        position = self.position(self.fetched)
        self.fetched += 1
        return self.tokenize_at([position])

    def tokenize_at(self, positions: list[int]) -> list[TokenizedDoc]:
        docs = []
        for position in positions:
            ids, _ = render(self.tokenizer, self.conversations[position % len(self.conversations)], self.sequence_len)
            docs.append((position, np.array(ids, dtype=np.int32)))
        return docs


class MidtrainLoader:
    """Endless iterator of (inputs, targets) LongTensors of shape (batch_size, sequence_len)."""

    def __init__(self, tokenizer: Tokenizer, conversations: Sequence, batch_size: int, sequence_len: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu", buffer_size: int = 100):
        check_conversations(conversations, rank, world_size)
        check_positive(batch_size=batch_size, sequence_len=sequence_len, buffer_size=buffer_size)
        self.batch_size, self.sequence_len = batch_size, sequence_len
        self.device = torch.device(device)
        self.num_conversations = len(conversations)
        self._feed = _ConversationFeed(tokenizer, conversations, sequence_len, rank, world_size)
        self._packer = BestFitPacker(self._feed, buffer_size, crop=MIDTRAIN_CROP)
        self._settings = {"loader": "midtrain", "batch_size": batch_size, "sequence_len": sequence_len,
                          "rank": rank, "world_size": world_size, "buffer_size": buffer_size,
                          "vocab_size": tokenizer.vocab_size, "num_conversations": len(conversations)}

    def __iter__(self) -> "MidtrainLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows, _ = self._packer.next_rows(self.batch_size, self.sequence_len)
        batch = torch.from_numpy(rows)
        return to_device(batch[:, :-1], batch[:, 1:], device=self.device)

    @property
    def epoch(self) -> int:
        """The pass over the data that the next conversation read belongs to (starting at 1), as the
        reference counts: it turns over as soon as the last conversation of a pass is read."""
        return self._feed.position(self._feed.fetched) // self.num_conversations + 1

    @property
    def epoch_done(self) -> bool:
        """Whether this rank's rows so far used its share of one epoch (the reference's last-step
        trigger: rank + W * conversations used >= N). It stays true from then on."""
        used = self._feed.fetched - len(self._packer.held())
        return self._feed.position(used) >= self.num_conversations

    def state_dict(self) -> dict:
        """A small JSON-serialisable state from which `load_state_dict` continues exactly."""
        return {"version": STATE_VERSION, **self._settings, "fetched": self._feed.fetched,
                "held": self._packer.held()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, STATE_VERSION, self._settings)
        self._feed.fetched = state["fetched"]
        self._packer.restore(self._feed.tokenize_at(state["held"]), 0)


def _batches_until_epoch_end(lengths: Sequence[int], rank: int, world_size: int, batch_size: int,
                             capacity: int, buffer_size: int) -> int:
    """How many batches rank `rank` yields up to and including the one that ends its epoch (at least
    one: rank < W <= N, so the flag is down before the first)."""
    buffer = BestFitBuffer(buffer_size, MIDTRAIN_CROP)
    fetched = used = batches = 0

    def refill() -> None:
        nonlocal fetched
        buffer.add(lengths[(rank + world_size * fetched) % len(lengths)])
        fetched += 1

    while rank + world_size * used < len(lengths):
        for _ in range(batch_size):
            used += len(buffer.pack_row(capacity, refill))
        batches += 1
    return batches


def midtrain_epoch_steps(lengths: Sequence[int], batch_size: int, sequence_len: int, grad_accum_steps: int,
                         world_size: int, buffer_size: int = 100) -> int:
    """Optimizer steps in one midtraining epoch: what the reference's loop runs before it stops.

    `lengths` are the rendered conversation lengths (conversation_lengths); `batch_size` is rows
    per micro-batch per rank. The ranks' loaders are replayed on lengths alone. The reference
    checks the end-of-epoch flag (any rank's, after an all-reduce) before each step, having fetched
    one micro-batch ahead, so with the flag first raised by micro-batch k (counting from 1) it runs
    ceil((k - 1) / grad_accum_steps) steps.
    """
    check_conversations(lengths, 0, world_size)
    check_positive(batch_size=batch_size, sequence_len=sequence_len, grad_accum_steps=grad_accum_steps,
                    buffer_size=buffer_size)
    last_batch = min(_batches_until_epoch_end(lengths, rank, world_size, batch_size, sequence_len + 1, buffer_size)
                     for rank in range(world_size))
    steps = -(-(last_batch - 1) // grad_accum_steps)
    if steps == 0:
        raise ValueError(f"one epoch of these {len(lengths)} conversations fills only {last_batch} micro-batch, "
                         "which leaves no optimizer step; use more conversations or a smaller batch")
    return steps


class SFTLoader:
    """Endless iterator of (inputs, targets) LongTensors of shape (batch_size, longest - 1)."""

    def __init__(self, tokenizer: Tokenizer, conversations: Sequence, batch_size: int, sequence_len: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        check_conversations(conversations, rank, world_size)
        check_positive(batch_size=batch_size)
        if sequence_len < 2:
            raise ValueError(f"sequence_len must be at least 2 (a token and its target), got {sequence_len}")
        self.tokenizer, self.conversations = tokenizer, conversations
        self.batch_size, self.sequence_len = batch_size, sequence_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.per_epoch = len(range(rank, len(conversations), world_size))  # this rank's conversations
        self.pad_id = tokenizer.encode_special(ASSISTANT_END)
        self.taken = 0  # conversations batched so far by this rank
        self.supervised_tokens = 0  # targets other than -1 in the latest batch (the reference's num_tokens)
        self._settings = {"loader": "sft", "batch_size": batch_size, "sequence_len": sequence_len, "rank": rank,
                          "world_size": world_size, "vocab_size": tokenizer.vocab_size,
                          "num_conversations": len(conversations)}

    def __iter__(self) -> "SFTLoader":
        return self

    def _rendered(self, read: int) -> tuple[list[int], list[int]]:
        index = self.rank + self.world_size * (read % self.per_epoch)
        return render(self.tokenizer, self.conversations[index], self.sequence_len)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rendered = [self._rendered(self.taken + row) for row in range(self.batch_size)]
        self.taken += self.batch_size
        width = max(len(ids) for ids, _ in rendered) - 1
        inputs = np.full((self.batch_size, width), self.pad_id, dtype=np.int64)
        targets = np.full((self.batch_size, width), IGNORE, dtype=np.int64)
        for row, (ids, mask) in enumerate(rendered):
            ids = np.array(ids, dtype=np.int64)
            inputs[row, :len(ids) - 1] = ids[:-1]
            # A target is supervised when its own token is (mask[0] is BOS, never a target).
            targets[row, :len(ids) - 1] = np.where(np.array(mask[1:], dtype=bool), ids[1:], IGNORE)
        self.supervised_tokens = int((targets != IGNORE).sum())
        return to_device(torch.from_numpy(inputs), torch.from_numpy(targets), device=self.device)

    @property
    def epoch(self) -> int:
        """The pass over this rank's conversations that the next one read belongs to (starting at 1)."""
        return self.taken // self.per_epoch + 1

    def state_dict(self) -> dict:
        """A small JSON-serialisable state from which `load_state_dict` continues exactly."""
        return {"version": STATE_VERSION, **self._settings, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, STATE_VERSION, self._settings)
        self.taken = state["taken"]
