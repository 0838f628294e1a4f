"""One builder per config group, and `build_run`, which assembles a whole run from a config.

Everything that trains or measures a model of a config (the loop, llm.bench, the precision test)
calls `build_run`, so a config means the same components everywhere. A later stage (midtraining,
SFT, RL) reuses it with its own `loaders` and an `init_from` parent checkpoint.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from llm.config import derived
from llm.config.derived import ModelShape, Plan
from llm.data.corpus import ensure_embedded_corpus
from llm.data.fineweb import download_fineweb_edu
from llm.data.loader import TokenLoader, make_loader
from llm.data.paths import base_dir
from llm.data.tokenizer import Tokenizer, ensure_tokenizer
from llm.model import attention
from llm.model.gpt import GPT
from llm.optim.build import build_optimizer
from llm.train import checkpoint
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
    return ensure_tokenizer(base, corpus_dir, data.vocab_size, data.tokenizer_max_chars, data.text_column)


def model(shape: ModelShape, attention_cfg: DictConfig, device: torch.device) -> GPT:
    """Shapes on the meta device first, then storage on the target device, then one explicit init."""
    attention.set_backend(attention_cfg.backend)
    with torch.device("meta"):
        gpt = GPT(shape)
    gpt.to_empty(device=device)
    gpt.init_weights()
    return gpt


def optimizer(gpt: GPT, plan: Plan, optim: DictConfig, runtime: Runtime) -> torch.optim.Optimizer:
    return build_optimizer(gpt.parameter_groups(), plan.learning_rates, plan.weight_decay, optim,
                           distributed=runtime.distributed)


def loader(cfg: DictConfig, tok: Tokenizer, corpus_dir: Path, split: str, runtime: Runtime) -> TokenLoader:
    """The `dataloader` group's packing over the `data` group's corpus, in the `train` group's batches."""
    packing = cfg.dataloader
    return make_loader(tok, corpus_dir, split=split, batch_size=cfg.train.device_batch_size,
                       sequence_len=cfg.model.sequence_len, rank=runtime.rank, world_size=runtime.world_size,
                       device=runtime.device, packing=packing.name, buffer_size=packing.buffer_size,
                       tokenizer_batch_size=packing.tokenizer_batch_size,
                       tokenizer_threads=packing.tokenizer_threads, text_column=cfg.data.text_column,
                       shard_by=packing.shard_by)


@dataclass
class Loaders:
    """What a stage trains and evaluates on: a resumable training loader and fresh validation passes."""
    train: TokenLoader  # has state_dict/load_state_dict (saved in checkpoints) and epoch
    val: Callable[[], TokenLoader]  # a new loader from the start of the validation data, per evaluation


def pretraining_loaders(cfg: DictConfig, tok: Tokenizer, corpus_dir: Path, runtime: Runtime) -> Loaders:
    return Loaders(train=loader(cfg, tok, corpus_dir, "train", runtime),
                   val=lambda: loader(cfg, tok, corpus_dir, "val", runtime))


@dataclass
class Run:
    """The live components of a run, built from its config."""
    runtime: Runtime
    base: Path  # the data home
    corpus: Path
    tokenizer: Tokenizer
    plan: Plan
    model: GPT
    optimizer: torch.optim.Optimizer
    loaders: Loaders


def master_first(runtime: Runtime, make: Callable):
    """Rank 0 builds shared files (corpus, tokenizer) before the other ranks read them."""
    if runtime.is_master:
        result = make()
    runtime.barrier()
    return result if runtime.is_master else make()


def build_run(cfg: DictConfig, runtime: Runtime, loaders: Callable[..., Loaders] = pretraining_loaders,
              init_from: Path | None = None) -> Run:
    """Corpus, tokenizer, plan, model, optimizer and loaders of `cfg` on `runtime`.

    The plan's vocabulary is the tokenizer's (the one source of it). `loaders(cfg, tokenizer, corpus,
    runtime)` makes the data (pretraining's by default); `init_from` is a checkpoint (or run directory)
    whose weights replace the fresh initialisation, as a stage that continues a parent model needs.
    """
    base = base_dir(cfg.base_dir)
    corpus_dir = master_first(runtime, lambda: corpus(cfg, base))
    tok = master_first(runtime, lambda: tokenizer(cfg.data, corpus_dir, base))
    plan = derived.plan(cfg, runtime.world_size, tok.vocab_size)
    gpt = model(plan.shape, cfg.attention, runtime.device)
    if init_from is not None:
        gpt.load_state_dict(checkpoint.load_weights(checkpoint.resolve(init_from), runtime.device))
    return Run(runtime, base, corpus_dir, tok, plan, gpt, optimizer(gpt, plan, cfg.optim, runtime),
               loaders(cfg, tok, corpus_dir, runtime))
