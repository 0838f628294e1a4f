"""Typed schema of every config group, registered with Hydra's ConfigStore.

Each dataclass is the schema of one group under conf/. The YAML files fill in values; these
classes make a misspelt key or a wrong type fail when Hydra composes the config, before anything
runs. Derived quantities (model width, parameter counts, iterations, learning-rate scales) are not
stored here: `llm.config.derived.plan` computes all of them from a composed config.
"""

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    depth: int = MISSING  # number of transformer blocks: the one dial of model size
    aspect_ratio: int = 64  # model_dim = depth * aspect_ratio, rounded up to a multiple of head_dim
    head_dim: int = 128
    sequence_len: int = 2048
    window_pattern: str = "SSSL"  # tiled over layers; S = half context, L = full; last layer always L


@dataclass
class OptimConfig:
    name: str = "muon_adamw"  # muon_adamw: Muon on matrices, AdamW elsewhere; adamw: AdamW everywhere
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    weight_decay: float = 0.2  # at reference_depth; scaled by (reference_depth / depth)^2
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    adam_eps: float = 1e-10
    x0_beta1: float = 0.96  # the x0 skip-connection scalars want a longer memory
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup_steps: int = 300
    muon_ns_steps: int = 5
    muon_beta2: float = 0.95
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.4
    final_lr_frac: float = 0.0
    reference_batch_size: int = 2**19  # learning rates were tuned at this many tokens per step
    reference_depth: int = 12  # weight decay was tuned at this depth
    reference_model_dim: int = 768  # AdamW learning rates were tuned at this width


@dataclass
class DataloaderConfig:
    name: str = "bos_bestfit"  # bos_bestfit | stream
    buffer_size: int = 1000  # documents held for best-fit packing
    tokenizer_batch_size: int = 128  # documents tokenized together
    tokenizer_threads: int = 4
    shard_by: str = "row_groups"  # row_groups: each rank packs its own data | rows: slices of one global stream


@dataclass
class AttentionConfig:
    backend: str = "auto"  # auto: FA3 on Hopper, SDPA elsewhere | fa3 | sdpa


@dataclass
class BudgetConfig:
    # Exactly one horizon is normally set (the others stay -1); when several are, the precedence
    # is num_iterations, then target_flops, then target_param_data_ratio.
    name: str = "ratio"
    num_iterations: int = -1
    target_flops: float = -1.0
    target_param_data_ratio: float = -1.0


@dataclass
class DataConfig:
    name: str = "embedded"  # embedded | fineweb_edu | parquet
    path: Optional[str] = None  # parquet: the directory of shards
    text_column: str = "text"
    num_shards: int = -1  # fineweb_edu: how many training shards to fetch (-1: all); + 1 validation
    vocab_size: int = 32768
    tokenizer_max_chars: int = 2_000_000_000


@dataclass
class TrainConfig:
    device_batch_size: int = 32
    total_batch_size: int = 524288  # tokens per optimizer step, across ranks and accumulation
    compile: bool = True
    log_every: int = 1


@dataclass
class ChatEvalConfig:
    """Chat evaluation (llm.eval.chat): the reference's ChatCORE tasks or their offline stand-ins."""
    suite: str = "chatcore_offline"  # chatcore: the reference's six tasks (downloads) | chatcore_offline
    tasks: Optional[list[str]] = None  # a subset of the suite's tasks (then no suite score); None: all
    max_problems: int = -1  # problems per task, the first ones of each (-1: all)
    batch_size: int = 8  # prompts per forward pass of a categorical task
    num_samples: int = 1  # samples per generative problem; a problem passes if any sample does
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 50
    seed: int = 42
    every: int = -1  # chat evaluation every N steps of chat fine-tuning and at the end (-1: never)


@dataclass
class EvalConfig:
    every: int = 250  # val bpb every N steps (from step 0) and always at the end (-1: only at the end)
    tokens: int = 20 * 524288
    sample_every: int = 2000  # -1: never
    sample_tokens: int = 16
    sample_prompts: list[str] = field(default_factory=lambda: [
        "The capital of France is",
        "The chemical symbol of gold is",
        "If yesterday was Friday, then tomorrow will be",
        "The opposite of hot is",
        "The planets of the solar system are:",
        "My favorite color is",
        "If 5*x + 3 = 13, then x is",
    ])
    core_every: int = -1  # CORE every N steps and at the end (-1: never)
    core_max_per_task: int = 500  # examples per CORE task, a fixed shuffled subset (-1: all)
    bundle: str = "core"  # core: DCLM's bundle, downloaded | offline: built from held-out corpus text | a directory
    chat: Optional[ChatEvalConfig] = None  # set by eval=chat


@dataclass
class CheckpointConfig:
    every: int = -1  # steps between checkpoints; -1: only at the end
    keep: int = 2  # how many periodic checkpoints to keep on disk


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "llm"


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    dataloader: DataloaderConfig = MISSING
    attention: AttentionConfig = MISSING
    budget: BudgetConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    run_name: str = "run"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | float32 | bfloat16
    base_dir: Optional[str] = None  # data, tokenizers, caches; None: $LLM_HOME or ~/.cache/llm
    dry_run: bool = False
    sweep_name: str = "adhoc"  # set by conf/sweep/*; names the sweep's directory and its Slurm jobs
    sweeps_root: str = "sweeps"  # multirun sweeps write under ROOT/<sweep>/<label>/ (shared storage on a cluster)
    sweep_label: str = "${now:%Y-%m-%d_%H-%M-%S}"  # re-use a label to complete or extend that sweep


@dataclass
class EvaluateConfig:
    """The evaluation CLI (python -m llm.evaluate): one run directory, measured from the outside."""
    eval: EvalConfig = MISSING
    run_dir: Optional[str] = None  # a run directory written by train.py (its newest checkpoint is evaluated)
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42  # for the unconditioned samples
    base_dir: Optional[str] = None  # None: the run's own base_dir (then $LLM_HOME, then ~/.cache/llm)
    split_tokens: Optional[int] = None  # tokens per split for bits per byte; None: the run's eval.tokens
    unconditioned_samples: int = 8
    unconditioned_tokens: int = 128
    temperature: float = 1.0


GROUPS = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "dataloader": DataloaderConfig,
    "attention": AttentionConfig,
    "budget": BudgetConfig,
    "data": DataConfig,
    "eval": EvalConfig,
}


def register() -> None:
    """Register the schemas so that conf/ files can name them as their base in a defaults list."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    for group, schema in GROUPS.items():
        store.store(group=group, name=f"{group}_schema", node=schema)
