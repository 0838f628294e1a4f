"""The data of the chat stages: the stage's mixture (conf/stage/mixture) in the stage's batches.

Midtraining packs conversations best-fit into BOS-aligned rows and trains on every token; SFT pads
whole conversations and trains on the assistant's tokens (llm/data/chat_loader.py). An epoch is
counted the reference's way: for midtraining by replaying the packing over the conversations'
rendered lengths, for SFT as len(mixture) // stage.examples_per_step.
"""

from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig

from llm.data.chat_loader import MidtrainLoader, SFTLoader, conversation_lengths, midtrain_epoch_steps
from llm.data.tokenizer import Tokenizer
from llm.tasks.base import Task
from llm.tasks.registry import build_mixture
from llm.train.runtime import Runtime


@dataclass
class ChatData:
    train: Task
    val: Task

    @classmethod
    def of(cls, cfg: DictConfig) -> "ChatData":
        mixture = cfg.stage.mixture
        return cls(build_mixture(mixture.train, training=True, base=cfg.base_dir),
                   build_mixture(mixture.get("val"), training=False, base=cfg.base_dir))

    def loader_maker(self, cfg: DictConfig, tok: Tokenizer, runtime: Runtime) -> Callable:
        """conversations -> the stage's loader over them, on this rank."""
        kind = MidtrainLoader if cfg.stage.name == "mid" else SFTLoader
        return lambda conversations: kind(tok, conversations, cfg.train.device_batch_size, cfg.model.sequence_len,
                                          runtime.rank, runtime.world_size, runtime.device)

    def steps_per_epoch(self, cfg: DictConfig, tok: Tokenizer, grad_accum_steps: int, world_size: int) -> int:
        if cfg.stage.name == "sft":
            return len(self.train) // cfg.stage.examples_per_step
        lengths = conversation_lengths(tok, self.train, cfg.model.sequence_len)
        return midtrain_epoch_steps(lengths, cfg.train.device_batch_size, cfg.model.sequence_len, grad_accum_steps,
                                    world_size)
