"""Everything that follows from a composed config, computed in one place.

The model width, the parameter breakdown, FLOPs per token, the training horizon, gradient
accumulation and the scaled learning rates are pure functions of the config. `plan` computes all of
them without torch, so `dry_run`, the sweep grid, the planner and the tests share one source of
truth; a test holds these counts equal to the real model's at several depths.
"""

from dataclasses import dataclass, field
from typing import Mapping

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

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def value_embed_layers(self) -> list[int]:
        # Alternating layers, aligned so that the last layer always has one.
        return [i for i in range(self.depth) if i % 2 == (self.depth - 1) % 2]

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
    if not pattern or set(pattern) - {"S", "L"}:
        raise ConfigError(f"model.window_pattern={model['window_pattern']!r}: use only the letters S and L")
    # Round the width up to whole heads, so that every depth gets exactly head_dim per head.
    model_dim = -(-depth * model["aspect_ratio"] // head_dim) * head_dim
    if model_dim < VE_GATE_CHANNELS:
        raise ConfigError(f"model_dim={model_dim} is below {VE_GATE_CHANNELS}: raise model.head_dim or model.aspect_ratio")
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


def num_iterations(budget: Mapping, n_scaling: int, flops_token: int, total_batch_size: int) -> int:
    """Steps from the budget; precedence: explicit iterations, then target FLOPs, then tokens:params."""
    if budget["num_iterations"] > 0:
        steps = budget["num_iterations"]
    elif budget["target_flops"] > 0:
        steps = round(budget["target_flops"] / (flops_token * total_batch_size))
    elif budget["target_param_data_ratio"] > 0:
        steps = int(budget["target_param_data_ratio"] * n_scaling) // total_batch_size
    else:
        raise ConfigError("no training horizon: set budget.num_iterations, budget.target_flops or "
                          "budget.target_param_data_ratio (e.g. budget=iterations budget.num_iterations=100)")
    if steps < 1:
        raise ConfigError(f"the budget gives {steps} steps at total_batch_size={total_batch_size:,}: "
                          "raise the budget or lower train.total_batch_size")
    return steps


def learning_rates(optim: Mapping, model_dim: int, total_batch_size: int) -> dict[str, float]:
    """Per-role learning rates with every scale applied.

    Rates were tuned at a batch of 2^19 tokens: they scale with sqrt(batch / 2^19). The AdamW rates
    of the embeddings and lm_head were tuned at width 768 and scale with (model_dim / 768)^-0.5.
    """
    batch_scale = (total_batch_size / optim["reference_batch_size"]) ** 0.5
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
    num_iterations: int
    total_batch_size: int
    grad_accum_steps: int
    learning_rates: dict[str, float] = field(repr=False)
    weight_decay: float

    @property
    def total_tokens(self) -> int:
        return self.num_iterations * self.total_batch_size

    @property
    def total_flops(self) -> float:
        return float(self.flops_per_token) * self.total_tokens

    @property
    def tokens_per_param(self) -> float:
        return self.total_tokens / self.scaling_params

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
            f"num_iterations       {self.num_iterations:,} (batch {self.total_batch_size:,} tokens, "
            f"grad accumulation {self.grad_accum_steps})",
            f"tokens               {self.total_tokens:,} ({self.tokens_per_param:.2f} per scaling parameter)",
            f"total FLOPs          {self.total_flops:.6e}",
        ]
        return "\n".join(lines)

    def one_line(self) -> str:
        """The plan of one job of a sweep, as a dry run of the sweep lists it."""
        return (f"d{self.shape.depth} (dim {self.shape.model_dim}): {self.params['total']:,} params, "
                f"{self.scaling_params:,} scaling | {self.flops_per_token:.3e} FLOPs/token | "
                f"{self.num_iterations:,} iterations | {self.total_tokens:.3e} tokens | "
                f"{self.total_flops:.3e} FLOPs")

    def describe(self) -> dict:
        """The plan as plain data, as dry_run prints it and sweeps record it."""
        s = self.shape
        return {
            "depth": s.depth, "model_dim": s.model_dim, "n_head": s.n_head, "n_kv_head": s.n_kv_head,
            "head_dim": s.head_dim, "sequence_len": s.sequence_len, "window_pattern": s.window_pattern,
            "vocab_size": s.vocab_size, "params": dict(self.params), "scaling_params": self.scaling_params,
            "flops_per_token": self.flops_per_token, "num_iterations": self.num_iterations,
            "total_batch_size": self.total_batch_size, "grad_accum_steps": self.grad_accum_steps,
            "total_tokens": self.total_tokens, "total_flops": self.total_flops,
            "tokens_per_param": self.tokens_per_param,
        }


def plan(cfg: Mapping, world_size: int = 1, vocab_size: int | None = None) -> Plan:
    """Derive the whole training plan from a composed config (a DictConfig or plain dict)."""
    shape = model_shape(cfg["model"], vocab_size or cfg["data"]["vocab_size"])
    train = cfg["train"]
    rows_per_step = train["device_batch_size"] * shape.sequence_len * world_size
    if train["device_batch_size"] < 1 or train["total_batch_size"] % rows_per_step:
        raise ConfigError(
            f"train.total_batch_size={train['total_batch_size']:,} is not a multiple of device_batch_size × "
            f"sequence_len × world_size = {rows_per_step:,}: pick a total batch that this divides")
    counts = parameter_counts(shape)
    n_scaling = scaling_params(counts)
    flops_token = flops_per_token(shape, counts)
    return Plan(
        shape=shape,
        params=counts,
        scaling_params=n_scaling,
        flops_per_token=flops_token,
        num_iterations=num_iterations(cfg["budget"], n_scaling, flops_token, train["total_batch_size"]),
        total_batch_size=train["total_batch_size"],
        grad_accum_steps=train["total_batch_size"] // rows_per_step,
        learning_rates=learning_rates(cfg["optim"], shape.model_dim, train["total_batch_size"]),
        weight_decay=weight_decay(cfg["optim"], shape.depth),
    )
