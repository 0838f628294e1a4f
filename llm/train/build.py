"""One builder per config group, and `build_run`, which assembles a whole run from a config.

Everything that trains or measures a model of a config (the loop, llm.bench, the precision test)
calls `build_run`, so a config means the same components everywhere. Pretraining builds its
corpus and tokenizer; a later stage (midtraining, SFT, RL) takes the tokenizer and weights of its
parent run and the conversations of its mixture.
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
from llm.train.chat_data import ChatData
from llm.train.lineage import Parent
from llm.train.rundir import TOKENIZER_DIR
from llm.train.rollouts import policy_gradient_loss
from llm.train.runtime import Runtime
from llm.train.step import next_token_loss


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
    """What a stage trains and evaluates on: a resumable training loader, the loss of one of its
    batches, and fresh validation passes."""
    train: TokenLoader  # has state_dict/load_state_dict (saved in checkpoints) and epoch
    val: Callable[[], TokenLoader]  # a new loader from the start of the validation data, per evaluation
    objective: Callable = next_token_loss  # (model, training batch) -> loss
    step_metrics: Callable[[], dict] = dict  # what the latest step's batches measured (RL: their reward)


def pretraining_loaders(cfg: DictConfig, tok: Tokenizer, corpus_dir: Path, runtime: Runtime) -> Loaders:
    return Loaders(train=loader(cfg, tok, corpus_dir, "train", runtime),
                   val=lambda: loader(cfg, tok, corpus_dir, "val", runtime))


@dataclass
class Run:
    """The live components of a run, built from its config."""
    runtime: Runtime
    base: Path  # the data home
    corpus: Path | None  # pretraining's corpus (None for a chat stage)
    tokenizer: Tokenizer
    plan: Plan
    model: GPT
    optimizer: torch.optim.Optimizer
    loaders: Loaders
    chat: ChatData | None = None  # a chat stage's tasks (RL evaluates pass@k on the val task)


def master_first(runtime: Runtime, make: Callable):
    """Rank 0 builds shared files (corpus, tokenizer) before the other ranks read them."""
    if runtime.is_master:
        result = make()
    runtime.barrier()
    return result if runtime.is_master else make()


def build_run(cfg: DictConfig, runtime: Runtime, loaders: Callable[..., Loaders] = pretraining_loaders,
              parent: Parent | None = None, chat: ChatData | None = None) -> Run:
    """Corpus, tokenizer, plan, model, optimizer and loaders of `cfg` on `runtime`.

    The plan's vocabulary is the tokenizer's (the one source of it). Pretraining makes its data with
    `loaders(cfg, tokenizer, corpus, runtime)`; a chat stage (`parent` given, see llm.train.lineage)
    starts from the parent's newest weights with the parent's tokenizer, on its mixture (`chat`, read
    here unless given), and counts its epoch from the conversations when the budget asks for one;
    RL's training batches are sampled by the model itself, and scored (llm.train.rollouts).
    """
    base = base_dir(cfg.base_dir)
    if parent is None:
        corpus_dir = master_first(runtime, lambda: corpus(cfg, base))
        tok = master_first(runtime, lambda: tokenizer(cfg.data, corpus_dir, base))
        plan = derived.plan(cfg, runtime.world_size, tok.vocab_size)
        data = loaders(cfg, tok, corpus_dir, runtime)
        gpt = model(plan.shape, cfg.attention, runtime.device)
        return Run(runtime, base, corpus_dir, tok, plan, gpt, optimizer(gpt, plan, cfg.optim, runtime), data)
    tok = Tokenizer.load(parent.run_dir / TOKENIZER_DIR)
    chat = chat or master_first(runtime, lambda: ChatData.of(cfg))  # rank 0 writes generated files, downloads
    plan = derived.plan(cfg, runtime.world_size, tok.vocab_size)
    if plan.num_iterations is None:  # budget=epochs
        steps = chat.steps_per_epoch(cfg, tok, plan.grad_accum_steps, runtime.world_size)
        plan = derived.plan(cfg, runtime.world_size, tok.vocab_size, steps)
    gpt = model(plan.shape, cfg.attention, runtime.device)
    gpt.load_state_dict(checkpoint.load_weights(checkpoint.resolve(parent.run_dir), runtime.device))
    make = chat.loader_maker(cfg, tok, runtime)
    if cfg.stage.name == "rl":  # the training batches are replies sampled from the model being trained
        rollouts = chat.rollouts(cfg, tok, runtime, gpt)
        data = Loaders(rollouts, lambda: make(chat.val), policy_gradient_loss, rollouts.step_metrics)
    else:
        data = Loaders(train=make(chat.train), val=lambda: make(chat.val))
    return Run(runtime, base, None, tok, plan, gpt, optimizer(gpt, plan, cfg.optim, runtime), data, chat)
