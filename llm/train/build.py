"""One builder per config group: turn a composed config and its plan into live components."""

from pathlib import Path

import torch
from omegaconf import DictConfig

from llm.config import derived
from llm.config.derived import ModelShape, Plan
from llm.data.corpus import ensure_embedded_corpus
from llm.data.fineweb import download_fineweb_edu
from llm.data.loader import make_loader
from llm.data.tokenizer import Tokenizer, ensure_tokenizer
from llm.model import attention
from llm.model.gpt import GPT
from llm.optim.build import build_optimizer
from llm.train.runtime import Runtime


def corpus(cfg: DictConfig, base: Path) -> Path:
    """The directory of parquet shards named by the `data` group (the last shard is validation)."""
    data = cfg.data
    if data.name == "embedded":
        return ensure_embedded_corpus(base)
    if data.name == "fineweb_edu":
        shards = derived.plan(cfg).fineweb_shards  # the shards follow from the tokens the run trains on
        return download_fineweb_edu(base, shards, data.val_shard)
    return Path(data.path).expanduser()  # the schema allows no other name; plan() checked the directory


def tokenizer(data: DictConfig, corpus_dir: Path, base: Path) -> Tokenizer:
    """Trained when no tokenizer exists yet for this corpus and vocabulary, else loaded."""
    return ensure_tokenizer(base, corpus_dir, data.vocab_size, data.tokenizer_max_chars)


def model(shape: ModelShape, attention_cfg: DictConfig, runtime: Runtime) -> GPT:
    """Shapes on the meta device first, then storage on the target device, then one explicit init."""
    attention.set_backend(attention_cfg.backend)
    with torch.device("meta"):
        gpt = GPT(shape)
    gpt.to_empty(device=runtime.device)
    gpt.init_weights()
    return gpt


def optimizer(gpt: GPT, plan: Plan, optim: DictConfig, runtime: Runtime) -> torch.optim.Optimizer:
    return build_optimizer(gpt.parameter_groups(), plan.learning_rates, plan.weight_decay, optim,
                           distributed=runtime.distributed)


def loader(cfg: DictConfig, tok: Tokenizer, corpus_dir: Path, split: str, runtime: Runtime):
    return make_loader(tok, corpus_dir, split=split, batch_size=cfg.train.device_batch_size,
                       sequence_len=cfg.model.sequence_len, rank=runtime.rank, world_size=runtime.world_size,
                       device=runtime.device, packing=cfg.dataloader.name,
                       buffer_size=cfg.dataloader.buffer_size,
                       tokenizer_batch_size=cfg.dataloader.tokenizer_batch_size,
                       tokenizer_threads=cfg.dataloader.tokenizer_threads, text_column=cfg.data.text_column,
                       shard_by=cfg.dataloader.shard_by)
