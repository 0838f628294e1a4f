"""Everything that follows from a composed config, computed in one place.

The model width, the parameter breakdown, FLOPs per token, the training horizon, gradient
accumulation and the scaled learning rates are pure functions of the config. `plan` computes all of
them without torch, so `dry_run`, the sweep grid, the planner and the tests share one source of
truth; a test holds these counts equal to the real model's at several depths.
"""

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from llm.config.cadence import invalid_cadence

VOCAB_PAD_MULTIPLE = 64  # the embedding tables are padded to a multiple of this for fast matmuls
VE_GATE_CHANNELS = 32  # the value-embedding gate reads this many leading channels of the input


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key and the fix."""


@dataclass(frozen=True)
class ModelShape:
    depth: int
    model_dim: int
    n_head: int
    n_kv_head: int
    head_dim: int
    sequence_len: int
    window_pattern: str
    vocab_size: int

    def __post_init__(self):
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even: rotary embeddings rotate channel pairs")
        if self.model_dim < VE_GATE_CHANNELS:
            raise ConfigError(f"model_dim={self.model_dim} is below the {VE_GATE_CHANNELS} channels the value "
                              "gate reads: raise model.head_dim or model.aspect_ratio")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise ConfigError(f"model.window_pattern={self.window_pattern!r}: use only the letters S and L")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def value_embed_layers(self) -> list[int]:
        # Alternating layers, aligned so that the last layer always has one.
        return [i for i in range(self.depth) if self.has_value_embedding(i)]

    def has_value_embedding(self, layer: int) -> bool:
        return layer % 2 == (self.depth - 1) % 2

    @property
    def window_lengths(self) -> list[int]:
        """Tokens each layer attends back over: S is half the context, L the whole of it."""
        lengths = {"S": self.sequence_len // 2, "L": self.sequence_len}
        pattern = self.window_pattern.upper()
        per_layer = [lengths[pattern[i % len(pattern)]] for i in range(self.depth)]
        per_layer[-1] = self.sequence_len  # the final layer always sees the full context
        return per_layer


def model_shape(model: Mapping, vocab_size: int) -> ModelShape:
    depth, head_dim = model["depth"], model["head_dim"]
    if depth < 1:
        raise ConfigError(f"model.depth={depth} is impossible: use a depth of 1 or more (e.g. model=d4)")
    if head_dim < 1 or model["aspect_ratio"] < 1:
        raise ConfigError("model.head_dim and model.aspect_ratio must be positive")
    if model["sequence_len"] < 2:
        raise ConfigError(f"model.sequence_len={model['sequence_len']} is too short: use 2 or more")
    pattern = str(model["window_pattern"]).upper()
    # Round the width up to whole heads, so that every depth gets exactly head_dim per head.
    model_dim = -(-depth * model["aspect_ratio"] // head_dim) * head_dim
    n_head = model_dim // head_dim
    return ModelShape(depth, model_dim, n_head, n_head, head_dim, model["sequence_len"], pattern, vocab_size)


def parameter_counts(shape: ModelShape) -> dict[str, int]:
    """The parameter breakdown under the reference's names, from the shape alone."""
    d, kv_dim, vocab = shape.model_dim, shape.n_kv_head * shape.head_dim, shape.padded_vocab_size
    n_ve = len(shape.value_embed_layers)
    attention = d * shape.n_head * shape.head_dim + 2 * d * kv_dim + shape.n_head * shape.head_dim * d
    mlp = 2 * d * 4 * d
    counts = {
        "wte": vocab * d,
        "value_embeds": n_ve * vocab * kv_dim,
        "lm_head": vocab * d,
        "transformer_matrices": shape.depth * (attention + mlp) + n_ve * VE_GATE_CHANNELS * shape.n_kv_head,
        "scalars": 2 * shape.depth,  # resid_lambdas and x0_lambdas
    }
    counts["total"] = sum(counts.values())
    return counts


def flops_per_token(shape: ModelShape, counts: Mapping[str, int]) -> int:
    """Training FLOPs per token: 6 per matmul weight, plus the attention scores within each window."""
    matmul_params = counts["transformer_matrices"] + counts["lm_head"]
    attention = sum(12 * shape.n_head * shape.head_dim * min(w, shape.sequence_len) for w in shape.window_lengths)
    return 6 * matmul_params + attention


def scaling_params(counts: Mapping[str, int]) -> int:
    """The parameter count the horizon and the scaling laws use: transformer matrices plus lm_head."""
    return counts["transformer_matrices"] + counts["lm_head"]


def describe_shape(shape: ModelShape) -> dict:
    """A shape and what follows from it alone (parameters, FLOPs per token), as plain data."""
    counts = parameter_counts(shape)
    return {**asdict(shape), "params": counts, "scaling_params": scaling_params(counts),
            "flops_per_token": flops_per_token(shape, counts)}


def num_iterations(budget: Mapping, n_scaling: int, flops_token: int, total_batch_size: int,
                   steps_per_epoch: int | None = None) -> int | None:
    """Steps from the budget, by its kind: given outright, from target FLOPs, from tokens per parameter,
    or from passes over a chat stage's mixture (None until the data has counted `steps_per_epoch`)."""
    kind = str(budget["name"])
    if kind == "iterations":
        steps = budget["num_iterations"]
    elif kind == "flops":
        steps = round(budget["target_flops"] / (flops_token * total_batch_size))
    elif kind == "ratio":
        steps = int(budget["target_param_data_ratio"] * n_scaling) // total_batch_size
    elif kind == "epochs":
        if budget["num_epochs"] < 1:
            raise ConfigError(f"budget.num_epochs={budget['num_epochs']}: train for at least one epoch")
        if steps_per_epoch is None:
            return None
        steps = budget["num_epochs"] * steps_per_epoch
    else:
        raise ConfigError(f"budget.name={kind!r} is unknown: use budget=iterations, flops, ratio or epochs")
    if steps < 1:
        raise ConfigError(f"budget={kind} gives {steps} steps at train.total_batch_size={total_batch_size:,}: "
                          "no training horizon; raise the budget or lower train.total_batch_size")
    return steps


# FineWeb-Edu shards a run needs, with the reference's figures (runs/speedrun.sh at 41bb2ea):
FINEWEB_CHARS_PER_SHARD = 250e6  # each shard holds about 250M characters of text
FINEWEB_CHARS_PER_TOKEN = 4.8  # the 32k-vocabulary tokenizer's compression on FineWeb-Edu
FINEWEB_SAFETY_MARGIN = 240 / 216  # the reference rounds the 216 shards its tokens need up to 240
BESTFIT_CROP_WASTE = 0.35  # best-fit packing crops about 35% of document tokens off the rows
FINEWEB_TRAIN_SHARDS = 1822  # shards 0..1821; shard_01822, the last, is the dataset's validation shard


def fineweb_shards_needed(tokens: float) -> int:
    """Training shards whose text covers `tokens` training tokens once, after packing's waste.

    The reference's own count: 561M params x 20 tokens each = 11.2B tokens -> 370 shards.
    """
    chars = tokens * FINEWEB_CHARS_PER_TOKEN / (1 - BESTFIT_CROP_WASTE)
    return min(FINEWEB_TRAIN_SHARDS, math.ceil(chars / FINEWEB_CHARS_PER_SHARD * FINEWEB_SAFETY_MARGIN))


def fineweb_train_shards(data: Mapping, total_tokens: int) -> int:
    """The training shards to download: the configured count, or the plan's need when it is null."""
    needed = fineweb_shards_needed(total_tokens)
    configured = data["num_shards"]
    if configured is None:
        return needed
    if configured == -1:
        return FINEWEB_TRAIN_SHARDS
    if not 1 <= configured <= FINEWEB_TRAIN_SHARDS:
        raise ConfigError(f"data.num_shards={configured} is out of range: use 1..{FINEWEB_TRAIN_SHARDS}, "
                          "-1 (all) or null (what the run needs)")
    if configured < needed:
        raise ConfigError(f"data.num_shards={configured} holds fewer tokens than the run's {total_tokens:.3g} "
                          f"(the run would repeat its data): use data.num_shards={needed} or null")
    return configured


CADENCE_KEYS = (("eval", "every"), ("eval", "core_every"), ("eval", "sample_every"), ("checkpoint", "every"))


def check_run_keys(cfg: Mapping) -> None:
    """What a run refuses besides its plan: cadences, and a parquet directory that is not there."""
    cadences = {f"{group}.{key}": cfg[group][key] for group, key in CADENCE_KEYS}
    for section in ("chat", "pass_at_k"):
        if cfg["eval"].get(section) is not None:
            cadences[f"eval.{section}.every"] = cfg["eval"][section]["every"]
    for key, value in cadences.items():
        complaint = invalid_cadence(key, value)
        if complaint:
            raise ConfigError(complaint)
    data = cfg["data"]
    if data["name"] == "parquet" and not Path(data["path"]).expanduser().is_dir():
        raise ConfigError(f"data.path={data['path']} is not a directory: point it at a folder of parquet shards")


def learning_rates(optim: Mapping, model_dim: int, total_batch_size: int | None,
                   init_lr_frac: float = 1.0) -> dict[str, float]:
    """Per-role learning rates with every scale applied.

    Rates were tuned at a batch of 2^19 tokens: they scale with sqrt(batch / 2^19); a batch counted
    in conversations (SFT, total_batch_size None) keeps the reference's rates as they are. The
    AdamW rates of the embeddings and lm_head were tuned at width 768 and scale with
    (model_dim / 768)^-0.5. A stage's init_lr_frac multiplies them all.
    """
    batch_scale = 1.0 if total_batch_size is None else (total_batch_size / optim["reference_batch_size"]) ** 0.5
    batch_scale *= init_lr_frac
    width_scale = (model_dim / optim["reference_model_dim"]) ** -0.5
    embedding = optim["embedding_lr"] * width_scale * batch_scale
    scalar = optim["scalar_lr"] * batch_scale
    return {
        "lm_head": optim["unembedding_lr"] * width_scale * batch_scale,
        "wte": embedding,
        "value_embeds": embedding,
        "resid_lambdas": scalar * 0.01,  # the residual scales are sensitive: a hundredth of the rate
        "x0_lambdas": scalar,
        "matrices": optim["matrix_lr"] * batch_scale,
    }


def weight_decay(optim: Mapping, depth: int) -> float:
    """Weight decay was tuned at depth 12 and scales as 1/width^2, i.e. (12 / depth)^2."""
    return optim["weight_decay"] * (optim["reference_depth"] / depth) ** 2


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    params: dict[str, int]
    scaling_params: int
    flops_per_token: int
    num_iterations: int | None  # None: one or more epochs of a chat mixture, not yet counted
    total_batch_size: int  # tokens per optimizer step (at most, when the batch is counted in conversations)
    grad_accum_steps: int
    learning_rates: dict[str, float] = field(repr=False)
    weight_decay: float
    fineweb_shards: int | None = None  # FineWeb-Edu training shards to download (None: another corpus)
    examples_per_step: int | None = None  # conversations (RL: questions) per step; None: a batch of total_batch_size tokens

    @property
    def total_tokens(self) -> int | None:
        return None if self.num_iterations is None else self.num_iterations * self.total_batch_size

    @property
    def total_flops(self) -> float | None:
        return None if self.num_iterations is None else float(self.flops_per_token) * self.total_tokens

    @property
    def tokens_per_param(self) -> float | None:
        return None if self.num_iterations is None else self.total_tokens / self.scaling_params

    def batch(self) -> str:
        if self.examples_per_step is None:
            return f"{self.total_batch_size:,} tokens"
        return f"{self.examples_per_step} conversations, at most {self.total_batch_size:,} tokens"

    def report(self) -> str:
        """The plan for a person: what dry_run prints and every run shows first."""
        s = self.shape
        width = 28
        lines = [
            f"depth {s.depth} | model_dim {s.model_dim} | heads {s.n_head} (kv {s.n_kv_head}) × head_dim {s.head_dim}"
            f" | sequence {s.sequence_len} | windows {s.window_pattern} | vocab {s.vocab_size:,}",
            "parameters:",
            *(f"  {name:<{width}} {count:>15,}" for name, count in self.params.items()),
            f"  {'scaling (matrices + lm_head)':<{width}} {self.scaling_params:>15,}",
            f"FLOPs per token      {self.flops_per_token:.6e}",
        ]
        batch = f"(batch {self.batch()}, grad accumulation {self.grad_accum_steps})"
        if self.num_iterations is None:
            lines.append(f"num_iterations       an epoch count of the stage's mixture, made when its data loads {batch}")
        else:
            lines += [f"num_iterations       {self.num_iterations:,} {batch}",
                      f"tokens               {self.total_tokens:,} ({self.tokens_per_param:.2f} per scaling parameter)",
                      f"total FLOPs          {self.total_flops:.6e}"]
        if self.fineweb_shards is not None:
            lines.append(f"FineWeb-Edu shards   {self.fineweb_shards} for training, + 1 to validate on")
        return "\n".join(lines)

    def one_line(self) -> str:
        """The plan of one job of a sweep, as a dry run of the sweep lists it."""
        if self.num_iterations is None:
            return f"d{self.shape.depth} (dim {self.shape.model_dim}): an epoch of the stage's mixture"
        return (f"d{self.shape.depth} (dim {self.shape.model_dim}): {self.params['total']:,} params, "
                f"{self.scaling_params:,} scaling | {self.flops_per_token:.3e} FLOPs/token | "
                f"{self.num_iterations:,} iterations | {self.total_tokens:.3e} tokens | "
                f"{self.total_flops:.3e} FLOPs")

    def describe(self) -> dict:
        """The plan as plain data, as dry_run prints it and sweeps record it."""
        return {**describe_shape(self.shape), "num_iterations": self.num_iterations,
                "total_batch_size": self.total_batch_size, "examples_per_step": self.examples_per_step,
                "grad_accum_steps": self.grad_accum_steps, "total_tokens": self.total_tokens,
                "total_flops": self.total_flops, "tokens_per_param": self.tokens_per_param}


def rollout_passes(questions: int, num_samples: int, device_batch_size: int, world_size: int) -> int:
    """Forward passes per RL step on one rank: its share of the questions, each question's replies
    in passes of device_batch_size (the reference's examples_per_rank × num_samples / batch)."""
    if questions < 1 or questions % world_size:
        raise ConfigError(f"stage.examples_per_step={questions} questions do not divide among {world_size} ranks: "
                          "pick a multiple of the number of processes")
    if num_samples < 1 or num_samples % device_batch_size:
        raise ConfigError(f"stage.rollout.num_samples={num_samples} is not a multiple of train.device_batch_size="
                          f"{device_batch_size}: each question's replies go through in whole passes")
    return questions // world_size * (num_samples // device_batch_size)


def check_stage(cfg: Mapping) -> None:
    """A chat stage needs a parent run and a mixture; pretraining has neither."""
    stage = cfg["stage"]
    name = str(stage["name"])
    if name == "base":
        if cfg["init_from"] is not None:
            raise ConfigError("stage=base trains a new model from scratch: drop init_from, or choose stage=mid, sft or rl")
        if str(cfg["budget"]["name"]) == "epochs":
            raise ConfigError("budget=epochs counts passes over a chat mixture: pretraining takes budget=iterations, "
                              "flops or ratio")
        return
    if cfg["init_from"] is None:
        raise ConfigError(f"stage={name} continues a trained model: name its run directory with init_from=DIR")
    if stage["mixture"] is None:
        raise ConfigError(f"stage={name} has no data: choose a mixture, e.g. stage/mixture=offline_{name}")
    if (name == "rl") != (stage["rollout"] is not None):
        raise ConfigError(f"stage.rollout is how stage=rl samples its replies: set it for stage=rl only, not {name}")
    if name != "rl" and cfg["eval"].get("pass_at_k") is not None:
        raise ConfigError(f"eval.pass_at_k scores stage=rl's held-out task; stage={name} has none: drop it")


def plan(cfg: Mapping, world_size: int = 1, vocab_size: int | None = None, steps_per_epoch: int | None = None) -> Plan:
    """Derive the whole training plan from a composed config (a DictConfig or plain dict).

    `steps_per_epoch` is what a chat stage's data counts once it is loaded (budget=epochs needs it;
    without it the plan's horizon is None, as a dry run shows it).
    """
    shape = model_shape(cfg["model"], vocab_size or cfg["data"]["vocab_size"])
    train, stage = cfg["train"], cfg["stage"]
    examples = stage["examples_per_step"]
    check_stage(cfg)
    if train["device_batch_size"] < 1:
        raise ConfigError(f"train.device_batch_size={train['device_batch_size']}: use 1 or more rows per pass")
    if examples is None:
        rows_per_step = train["device_batch_size"] * shape.sequence_len * world_size
        if train["total_batch_size"] % rows_per_step:
            raise ConfigError(
                f"train.total_batch_size={train['total_batch_size']:,} is not a multiple of device_batch_size × "
                f"sequence_len × world_size = {rows_per_step:,}: pick a total batch that this divides")
        grad_accum, tokens_per_step = train["total_batch_size"] // rows_per_step, train["total_batch_size"]
    elif stage["rollout"] is None:
        per_pass = train["device_batch_size"] * world_size
        if examples < 1 or examples % per_pass:
            raise ConfigError(f"stage.examples_per_step={examples} is not a multiple of device_batch_size × "
                              f"world_size = {per_pass}: pick a number of conversations that this divides")
        # Conversations are padded to the longest of their batch and cut at sequence_len: at most this.
        grad_accum, tokens_per_step = examples // per_pass, examples * shape.sequence_len
    else:
        grad_accum = rollout_passes(examples, stage["rollout"]["num_samples"], train["device_batch_size"], world_size)
        # Each question's replies are padded to the longest of them, within the context: at most this.
        tokens_per_step = examples * stage["rollout"]["num_samples"] * shape.sequence_len
    check_run_keys(cfg)
    counts = parameter_counts(shape)
    n_scaling = scaling_params(counts)
    flops_token = flops_per_token(shape, counts)
    steps = num_iterations(cfg["budget"], n_scaling, flops_token, tokens_per_step, steps_per_epoch)
    is_fineweb = cfg["data"]["name"] == "fineweb_edu" and str(cfg["stage"]["name"]) == "base"
    return Plan(
        shape=shape,
        params=counts,
        scaling_params=n_scaling,
        flops_per_token=flops_token,
        num_iterations=steps,
        fineweb_shards=fineweb_train_shards(cfg["data"], steps * tokens_per_step) if is_fineweb else None,
        total_batch_size=tokens_per_step,
        examples_per_step=examples,
        grad_accum_steps=grad_accum,
        learning_rates=learning_rates(cfg["optim"], shape.model_dim, None if examples else tokens_per_step,
                                      cfg["stage"]["init_lr_frac"]),
        weight_decay=weight_decay(cfg["optim"], shape.depth),
    )
