"""The data of the chat stages: the stage's mixture (conf/stage/mixture) in the stage's batches.

Midtraining packs conversations best-fit into BOS-aligned rows and trains on every token; SFT pads
whole conversations and trains on the assistant's tokens (llm/data/chat_loader.py); RL trains on
replies it samples to one task's questions, scored by that task (llm/train/rollouts.py), and
validates, as SFT does, on padded conversations of its held-out questions. An epoch is counted the
reference's way: for midtraining by replaying the packing over the conversations' rendered
lengths, for SFT and RL as len(train) // stage.examples_per_step.
"""

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig

from llm.data.chat_loader import MidtrainLoader, SFTLoader, conversation_lengths, midtrain_epoch_steps
from llm.data.tokenizer import Tokenizer
from llm.tasks.base import Task, TaskError
from llm.tasks.registry import build_mixture, build_task
from llm.train.rollouts import RolloutLoader
from llm.train.runtime import Runtime


def scored_task(entries: Mapping[str, Mapping[str, Any]] | None, part: str, base: str | None) -> Task:
    """The one task that an RL mixture's `part` (train or val) names, which must score free-form replies."""
    entries = entries or {}
    if len(entries) != 1:
        raise TaskError(f"stage=rl rewards replies by their task's own evaluation, so stage.mixture.{part} names "
                        f"exactly one task (it names {len(entries)}): e.g. stage/mixture=offline_rl")
    (label, entry), = entries.items()
    tasks = build_task(label, entry, base)
    task = tasks[0]
    if len(tasks) != 1:
        raise TaskError(f"stage.mixture.{part}.{label}: RL takes each task once; set budget.num_epochs instead")
    if task.eval_type != "generative" or type(task).evaluate is Task.evaluate:
        raise TaskError(f"stage.mixture.{part}.{label}: {task.name} cannot score a free-form reply, so it gives "
                        "no reward: use a task that checks answers, e.g. spelling_bee or gsm8k")
    if part == "train" and not task.trainable:
        raise TaskError(f"stage.mixture.train.{label}: {task.name} is evaluation-only data: use its train split")
    if len(task) == 0:
        raise TaskError(f"stage.mixture.{part}.{label}: {task.name} has no questions; give it some")
    return task


@dataclass
class ChatData:
    train: Task
    val: Task

    @classmethod
    def of(cls, cfg: DictConfig) -> "ChatData":
        mixture = cfg.stage.mixture
        if cfg.stage.name == "rl":
            return cls(scored_task(mixture.train, "train", cfg.base_dir), scored_task(mixture.get("val"), "val",
                                                                                      cfg.base_dir))
        return cls(build_mixture(mixture.train, training=True, base=cfg.base_dir),
                   build_mixture(mixture.get("val"), training=False, base=cfg.base_dir))

    def loader_maker(self, cfg: DictConfig, tok: Tokenizer, runtime: Runtime) -> Callable:
        """conversations -> the stage's loader over them, on this rank (RL's: for validation)."""
        kind = MidtrainLoader if cfg.stage.name == "mid" else SFTLoader
        return lambda conversations: kind(tok, conversations, cfg.train.device_batch_size, cfg.model.sequence_len,
                                          runtime.rank, runtime.world_size, runtime.device)

    def rollouts(self, cfg: DictConfig, tok: Tokenizer, runtime: Runtime, model: torch.nn.Module) -> RolloutLoader:
        """RL's training batches: replies that `model` samples to the train task's questions, on this rank."""
        return RolloutLoader(model, tok, self.train, cfg.stage.rollout, cfg.train.device_batch_size, cfg.seed,
                             runtime.autocast, runtime.rank, runtime.world_size)

    def steps_per_epoch(self, cfg: DictConfig, tok: Tokenizer, grad_accum_steps: int, world_size: int) -> int:
        if cfg.stage.name in ("sft", "rl"):
            return len(self.train) // cfg.stage.examples_per_step
        lengths = conversation_lengths(tok, self.train, cfg.model.sequence_len)
        return midtrain_epoch_steps(lengths, cfg.train.device_batch_size, cfg.model.sequence_len, grad_accum_steps,
                                    world_size)
