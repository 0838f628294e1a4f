"""Typed schema of every config group, registered with Hydra's ConfigStore.

Each dataclass is the schema of one group under conf/ (or of one option, where the options of a
group differ in their keys: budget, data). The schemas hold types only; every value lives in a
YAML file of its group, so each key a user can set is written down once, where they look for it.
Choices are enums: Hydra refuses `device=tpu` or `optim.name=sgd` while it composes, before
anything runs, dry runs included. The enums are `str` subclasses, so code compares them with plain
strings and they dump as plain strings. Derived quantities (model width, parameter counts,
iterations, learning-rate scales) are not stored here: `llm.config.derived.plan` computes them.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Device(StrEnum):
    auto = "auto"  # cuda if visible, else mps, else cpu
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Dtype(StrEnum):
    auto = "auto"  # bf16 autocast where bf16 matmuls are fast, else fp32
    float32 = "float32"
    bfloat16 = "bfloat16"


class OptimName(StrEnum):
    muon_adamw = "muon_adamw"  # Muon on the matrices, AdamW elsewhere
    adamw = "adamw"  # AdamW everywhere


class Packing(StrEnum):
    bos_bestfit = "bos_bestfit"  # every row starts at a document start, no padding
    stream = "stream"  # documents concatenated and cut into rows


class ShardBy(StrEnum):
    row_groups = "row_groups"  # each rank packs its own row groups
    rows = "rows"  # ranks take slices of one global stream


class AttentionBackend(StrEnum):
    auto = "auto"  # FA3 on Hopper, SDPA elsewhere
    fa3 = "fa3"
    sdpa = "sdpa"


class BudgetKind(StrEnum):
    iterations = "iterations"
    flops = "flops"
    ratio = "ratio"
    epochs = "epochs"  # passes over a chat stage's mixture


class StageName(StrEnum):
    base = "base"  # pretraining on a corpus
    mid = "mid"  # midtraining: packed conversations, every token trained on
    sft = "sft"  # supervised finetuning: padded conversations, the assistant's tokens trained on
    rl = "rl"  # reinforcement learning: sampled replies, rewarded by the task's own evaluation


class Corpus(StrEnum):
    embedded = "embedded"
    fineweb_edu = "fineweb_edu"
    parquet = "parquet"


class ValShard(StrEnum):
    dataset_last = "dataset_last"  # FineWeb-Edu's last shard (shard_01822), whatever is downloaded
    downloaded_last = "downloaded_last"  # the reference's: the last of the shards downloaded


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class ModelConfig:
    depth: int = MISSING
    aspect_ratio: int = MISSING
    head_dim: int = MISSING
    sequence_len: int = MISSING
    window_pattern: str = MISSING


@dataclass
class OptimConfig:
    name: OptimName = MISSING
    embedding_lr: float = MISSING
    unembedding_lr: float = MISSING
    matrix_lr: float = MISSING
    scalar_lr: float = MISSING
    weight_decay: float = MISSING
    adam_beta1: float = MISSING
    adam_beta2: float = MISSING
    adam_eps: float = MISSING
    x0_beta1: float = MISSING
    muon_momentum_start: float = MISSING
    muon_momentum_end: float = MISSING
    muon_momentum_warmup_steps: int = MISSING
    muon_ns_steps: int = MISSING
    muon_beta2: float = MISSING
    warmup_ratio: float = MISSING
    warmdown_ratio: float = MISSING
    final_lr_frac: float = MISSING
    reference_batch_size: int = MISSING
    reference_depth: int = MISSING
    reference_model_dim: int = MISSING


@dataclass
class DataloaderConfig:
    name: Packing = MISSING
    buffer_size: int = MISSING
    tokenizer_batch_size: int = MISSING
    tokenizer_threads: int = MISSING
    shard_by: ShardBy = MISSING


@dataclass
class AttentionConfig:
    backend: AttentionBackend = MISSING


@dataclass
class IterationsBudget:
    name: BudgetKind = MISSING
    num_iterations: int = MISSING


@dataclass
class FlopsBudget:
    name: BudgetKind = MISSING
    target_flops: float = MISSING


@dataclass
class RatioBudget:
    name: BudgetKind = MISSING
    target_param_data_ratio: float = MISSING


@dataclass
class EpochsBudget:
    name: BudgetKind = MISSING
    num_epochs: int = MISSING


@dataclass
class EmbeddedData:
    name: Corpus = MISSING
    text_column: str = MISSING
    vocab_size: int = MISSING
    tokenizer_max_chars: int = MISSING


@dataclass
class FineWebEduData(EmbeddedData):
    num_shards: Optional[int] = MISSING
    val_shard: ValShard = MISSING


@dataclass
class ParquetData(EmbeddedData):
    path: str = MISSING


@dataclass
class TrainConfig:
    device_batch_size: int = MISSING
    total_batch_size: int = MISSING
    compile: bool = MISSING
    log_every: int = MISSING


@dataclass
class ChatEvalConfig:
    """Chat evaluation (llm.eval.chat): the reference's ChatCORE tasks or their offline stand-ins."""
    suite: str = MISSING  # chatcore | chatcore_offline (checked against llm.eval.chat.SUITES)
    tasks: Optional[list[str]] = MISSING
    max_problems: int = MISSING
    batch_size: int = MISSING
    num_samples: int = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING
    seed: int = MISSING
    every: int = MISSING


@dataclass
class PassAtKConfig:
    """The RL stage's evaluation (llm.eval.chat.pass_at_k): held-out problems, several samples each."""
    every: int = MISSING
    max_problems: int = MISSING
    num_samples: int = MISSING  # pass@1 .. pass@num_samples are reported
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING
    seed: int = MISSING


@dataclass
class EvalConfig:
    every: int = MISSING
    tokens: int = MISSING
    sample_every: int = MISSING
    sample_tokens: int = MISSING
    sample_prompts: list[str] = MISSING
    core_every: int = MISSING
    core_max_per_task: int = MISSING
    bundle: str = MISSING
    chat: Optional[ChatEvalConfig] = MISSING  # null except under eval=chat
    pass_at_k: Optional[PassAtKConfig] = MISSING  # null except under stage=rl


@dataclass
class RolloutConfig:
    """How the RL stage samples its training replies from the model being trained."""
    num_samples: int = MISSING  # replies per question, compared with each other for the advantage
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING


@dataclass
class StageConfig:
    """Which stage of the pipeline a run is (conf/stage); the stage's settings of other groups sit in those groups."""
    name: StageName = MISSING
    mixture: Optional[Any] = MISSING  # {train: {label: task entry}, val: {...}} (conf/stage/mixture); null for base
    init_lr_frac: float = MISSING  # every initial learning rate times this
    examples_per_step: Optional[int] = MISSING  # conversations (RL: questions) per optimizer step; null: tokens
    rollout: Optional[RolloutConfig] = MISSING  # null except for stage=rl


@dataclass
class CheckpointConfig:
    every: int = MISSING
    keep: int = MISSING


@dataclass
class WandbConfig:
    mode: WandbMode = MISSING
    project: str = MISSING


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    dataloader: DataloaderConfig = MISSING
    attention: AttentionConfig = MISSING
    budget: Any = MISSING  # one of the budget schemas, chosen by the budget option
    data: Any = MISSING  # one of the data schemas, chosen by the data option
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    checkpoint: CheckpointConfig = MISSING
    wandb: WandbConfig = MISSING
    stage: StageConfig = MISSING
    init_from: Optional[str] = MISSING  # the parent run directory a later stage starts from
    run_name: str = MISSING
    seed: int = MISSING
    device: Device = MISSING
    dtype: Dtype = MISSING
    base_dir: Optional[str] = MISSING
    dry_run: bool = MISSING
    sweep_name: str = MISSING
    sweeps_root: str = MISSING
    sweep_label: str = MISSING


@dataclass
class EvaluateConfig:
    """The evaluation CLI (python -m llm.evaluate): one run directory, measured from the outside."""
    eval: EvalConfig = MISSING
    run_dir: Optional[str] = MISSING
    device: Device = MISSING
    dtype: Dtype = MISSING
    seed: int = MISSING
    base_dir: Optional[str] = MISSING
    split_tokens: Optional[int] = MISSING
    unconditioned_samples: int = MISSING
    unconditioned_tokens: int = MISSING
    temperature: float = MISSING


# group -> {schema name: schema}; a YAML option names its schema first in its defaults list.
GROUP_SCHEMAS = {
    "model": {"model_schema": ModelConfig},
    "optim": {"optim_schema": OptimConfig},
    "dataloader": {"dataloader_schema": DataloaderConfig},
    "attention": {"attention_schema": AttentionConfig},
    "budget": {"iterations_schema": IterationsBudget, "flops_schema": FlopsBudget, "ratio_schema": RatioBudget,
               "epochs_schema": EpochsBudget},
    "data": {"embedded_schema": EmbeddedData, "fineweb_edu_schema": FineWebEduData, "parquet_schema": ParquetData},
    "train": {"train_schema": TrainConfig},
    "eval": {"eval_schema": EvalConfig},
    "checkpoint": {"checkpoint_schema": CheckpointConfig},
    "wandb": {"wandb_schema": WandbConfig},
}


def register() -> None:
    """Register the schemas so that conf/ files can name them as their base in a defaults list."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=group, name=name, node=schema)
