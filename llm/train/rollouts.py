"""The RL stage's data and objective: replies sampled from the model being trained, and their reward.

As the reference's scripts/chat_rl.py ("GRPO" reduced to REINFORCE):

- Rank r of W takes the task's questions r, r+W, r+2W, ... in order, over and over. For each one
  the engine samples `num_samples` replies from the current weights, calculator tool included, in
  calls of `batch_size` rows; the task's own `evaluate` scores every reply (its reward).
- A reply's advantage is its reward minus the mean reward of the question's replies (no division
  by their spread).
- The loss of a pass is minus the advantage-weighted log-probability of the sampled tokens, summed
  and divided by the number of those tokens: the prompt and the tool's forced output are masked
  out, and so is the padding. The loop's gradient accumulation averages it over the passes of the
  step. On-policy, so there is no ratio to clip, and no KL term to a reference model.

The random draws of a question's replies are seeded by (run seed, the question's position in the
rank's stream, sampling call), so a loader's whole state is how many questions it has drawn: a
checkpoint taken between steps (when no replies are waiting) resumes the same samples exactly.
"""

from collections import deque
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.distributed as dist

from llm.data.chat_loader import IGNORE, check_conversations
from llm.data.conversation import ASSISTANT_END
from llm.data.loader import check_state
from llm.inference.engine import Engine
from llm.tasks.base import Task

STATE_VERSION = 1


@dataclass
class Rollouts:
    """One forward pass of replies: (B, T) inputs and targets (IGNORE where not sampled), (B,) advantages."""
    inputs: torch.Tensor
    targets: torch.Tensor
    advantages: torch.Tensor


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Each reward minus the mean of its group: positive for replies better than the question's average."""
    return rewards - rewards.mean()


def policy_gradient_loss(model: torch.nn.Module, batch: Rollouts) -> torch.Tensor:
    """Minus the advantage-weighted log-probability of the sampled tokens, per sampled token."""
    log_probs = -model(batch.inputs, batch.targets, loss_reduction="none").view_as(batch.inputs)  # 0 where ignored
    sampled = (batch.targets != IGNORE).sum().clamp(min=1)
    return -(log_probs * batch.advantages.unsqueeze(-1)).sum() / sampled


def seed_of(run_seed: int, position: int, call: int) -> int:
    """The generator seed of a sampling call: a fixed function of its place in the run (ints hash the same
    in every process)."""
    return hash((run_seed, position, call)) & 0x7FFFFFFF


class RolloutLoader:
    """Endless iterator of Rollouts, `num_samples // batch_size` passes per question.

    `step_metrics()` returns the mean reward and sequence length (prompt + reply, in tokens) of the
    questions rolled out since it was last called, averaged over ranks.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, task: Task, rollout, batch_size: int, run_seed: int,
                 autocast: Callable[[], ContextManager], rank: int = 0, world_size: int = 1):
        check_conversations(task, rank, world_size)
        if rollout.num_samples % batch_size:
            raise ValueError(f"num_samples={rollout.num_samples} is not a multiple of batch_size={batch_size}")
        self.engine, self.tokenizer, self.task, self.rollout = Engine(model, tokenizer), tokenizer, task, rollout
        self.batch_size, self.run_seed, self.rank, self.world_size = batch_size, run_seed, rank, world_size
        self.autocast = autocast
        self.device = next(model.parameters()).device
        self.context = model.config.sequence_len
        self.per_epoch = len(range(rank, len(task), world_size))  # this rank's questions
        self.pad_id = tokenizer.encode_special(ASSISTANT_END)
        self.drawn = 0  # questions rolled out so far by this rank
        self.waiting: deque[Rollouts] = deque()  # passes of the latest question not yet handed out
        self.rewards: list[float] = []  # per question since the last step_metrics()
        self.lengths: list[float] = []
        self._settings = {"loader": "rollouts", "batch_size": batch_size, "num_samples": rollout.num_samples,
                          "rank": rank, "world_size": world_size, "num_questions": len(task)}

    def __iter__(self) -> "RolloutLoader":
        return self

    def __next__(self) -> Rollouts:
        if not self.waiting:
            self.waiting.extend(self._roll_out(self.drawn))
            self.drawn += 1
        return self.waiting.popleft()

    @property
    def epoch(self) -> int:
        """The pass over this rank's questions that the next question belongs to (starting at 1)."""
        return self.drawn // self.per_epoch + 1

    def _roll_out(self, read: int) -> list[Rollouts]:
        """Sample, score and pad the replies to the rank's `read`-th question, cut into passes."""
        position = self.rank + self.world_size * read  # in the rank's endless stream over the task
        conversation = self.task[position % len(self.task)]
        prompt = self.tokenizer.render_for_completion(conversation)
        room = self.context - len(prompt)  # replies stay inside the context the model was trained on
        if room < 1:
            raise ValueError(f"{self.task.name} question {position % len(self.task)} has a {len(prompt)}-token prompt, "
                             f"which fills the model's {self.context}-token context: leave it out of the task")
        sequences, masks = [], []
        for call in range(self.rollout.num_samples // self.batch_size):
            with self.autocast():
                rows, row_masks = self.engine.generate_batch(
                    prompt, num_samples=self.batch_size, max_tokens=min(self.rollout.max_new_tokens, room),
                    temperature=self.rollout.temperature, top_k=self.rollout.top_k,
                    seed=seed_of(self.run_seed, position, call))
            sequences += rows
            masks += row_masks
        rewards = torch.tensor([float(self.task.evaluate(conversation, self.tokenizer.decode(sequence[len(prompt):])))
                                for sequence in sequences])
        self.rewards.append(rewards.mean().item())
        self.lengths.append(sum(map(len, sequences)) / len(sequences))
        width = max(map(len, sequences))
        ids = torch.tensor([sequence + [self.pad_id] * (width - len(sequence)) for sequence in sequences])
        sampled = torch.tensor([mask + [0] * (width - len(mask)) for mask in masks], dtype=torch.bool)
        # A target counts when its own token was sampled: prompt, tool output and padding are masked.
        targets = ids[:, 1:].masked_fill(~sampled[:, 1:], IGNORE)
        gains = advantages(rewards)
        return [Rollouts(ids[rows, :-1].to(self.device), targets[rows].to(self.device), gains[rows].to(self.device))
                for rows in (slice(start, start + self.batch_size)
                             for start in range(0, len(sequences), self.batch_size))]

    def step_metrics(self) -> dict:
        """{"reward", "sequence_length"} over the questions since the last call (all ranks), then forget them."""
        if not self.rewards:
            return {}
        means = torch.tensor([sum(self.rewards) / len(self.rewards), sum(self.lengths) / len(self.lengths)],
                             device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(means, op=dist.ReduceOp.AVG)
        self.rewards, self.lengths = [], []
        return {"reward": means[0].item(), "sequence_length": means[1].item()}

    def state_dict(self) -> dict:
        """A small JSON-serialisable state: the questions drawn (taken between steps, when none is waiting)."""
        if self.waiting:
            raise RuntimeError("a rollout loader is saved between optimizer steps, when no replies are waiting")
        return {"version": STATE_VERSION, **self._settings, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, STATE_VERSION, self._settings)
        self.drawn = state["drawn"]
