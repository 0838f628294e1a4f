"""From a compute budget to a training run: model depth, tokens, iterations and the command.

The fitted loss law gives the compute-optimal N and D for a budget C (counted as 6ND). Models
come only in whole depths, so we take the depth whose N is closest to N_opt in log space (an
IsoFLOP profile is a parabola in log N, so a factor too big costs as much as a factor too
small), give it the tokens that spend the same budget and estimate its loss from the law.

The tokens are C / flops_per_token, rounded to whole optimizer steps exactly as training with
a FLOPs budget rounds them. Given the model's own flops_per_token, which also counts attention,
the plan's iterations are the ones the run will train; without it, 6N stands in.

N must be counted in the convention the law was fitted in. Both `approximate_scaling_params` (no
config needed) and the command line (`llm.config.sizes`, from the composed config) use the config
layer's exact counts.
"""

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from llm.analysis.hardware import peak_flops
from llm.analysis.parametric import LossLaw
from llm.config import derived

DEFAULT_TOTAL_BATCH_SIZE = 524288  # tokens per optimizer step, the training default (2^19)
DEFAULT_DEPTHS = range(2, 65)


def approximate_scaling_params(
    depth: int, aspect_ratio: int = 64, head_dim: int = 128, vocab_size: int = 32768
) -> int:
    """Kaplan-convention N (transformer matrices + lm_head) of a depth, without composing a config.

    The count is the config layer's exact one for these shape settings; "approximate" only in that
    it assumes the given defaults instead of reading a run's config (`llm.config.sizes` does that).
    Sequence length and window pattern do not change N.
    """
    model = {"depth": depth, "aspect_ratio": aspect_ratio, "head_dim": head_dim, "sequence_len": 2048,
             "window_pattern": "L"}
    return derived.scaling_params(derived.parameter_counts(derived.model_shape(model, vocab_size)))


def flops_from_gpu_hours(gpu_hours: float, gpu: str, mfu: float) -> float:
    """Compute that gpu_hours on the named accelerator deliver at the given model FLOPs utilisation."""
    if not 0 < mfu <= 1:
        raise ValueError(f"MFU must be a fraction in (0, 1], got {mfu}")
    peak = peak_flops(gpu)
    if not np.isfinite(peak):
        raise ValueError(f"unknown accelerator {gpu!r}; name one in llm.analysis.hardware or pass FLOPs directly")
    return gpu_hours * 3600 * peak * mfu


@dataclass(frozen=True)
class RunPlan:
    """The law's optimum for a budget and the closest buildable run."""

    flops: float
    params_opt: float
    tokens_opt: float
    loss_opt: float
    depth: int
    params: int
    tokens: float
    loss: float
    iterations: int
    total_batch_size: int

    @property
    def command(self) -> str:
        # model.depth rather than model=d<depth>: conf/model has files for a few depths only.
        command = f"python train.py model.depth={self.depth} budget=flops budget.target_flops={self.flops!r}"
        if self.total_batch_size != DEFAULT_TOTAL_BATCH_SIZE:
            command += f" train.total_batch_size={self.total_batch_size}"
        return command

    def summary(self) -> dict:
        """A JSON-ready dict, including the command."""
        return {**{name: getattr(self, name) for name in self.__dataclass_fields__}, "command": self.command}


def plan_run(
    flops: float,
    law: LossLaw,
    params_for_depth: Callable[[int], float],
    *,
    flops_per_token_for_depth: Callable[[int], float] | None = None,
    depths: Iterable[int] = DEFAULT_DEPTHS,
    total_batch_size: int = DEFAULT_TOTAL_BATCH_SIZE,
) -> RunPlan:
    """Recommend a depth and training length for `flops` of compute under `law`.

    `flops_per_token_for_depth` is the model's training FLOPs per token (default 6N).
    """
    if not flops > 0:
        raise ValueError(f"compute budget must be positive, got {flops}")
    if total_batch_size <= 0:
        raise ValueError(f"total batch size must be positive, got {total_batch_size}")
    params_opt, tokens_opt = (float(x) for x in law.optimal_allocation(flops))
    if np.isnan(params_opt):
        raise ValueError(f"the law has no compute-optimal N (alpha={law.alpha:.3g}, beta={law.beta:.3g})")
    candidates = [(depth, params_for_depth(depth)) for depth in depths]
    if not candidates:
        raise ValueError("no candidate depths to choose from")
    smallest, largest = min(size for _, size in candidates), max(size for _, size in candidates)
    target = min(max(params_opt, smallest), largest)
    if target != params_opt:
        # Also the case of a law with alpha = 0 or beta = 0, whose N_opt is 0 or infinite.
        warnings.warn(f"the law's optimal N={params_opt:.3g} lies outside the candidate depths' sizes "
                      f"({smallest:.3g} to {largest:.3g}); taking the nearest end", stacklevel=2)
    depth, params = min(candidates, key=lambda item: abs(np.log(item[1] / target)))
    per_token = flops_per_token_for_depth(depth) if flops_per_token_for_depth else 6 * params
    iterations = round(flops / (per_token * total_batch_size))
    if iterations < 1:
        raise ValueError(f"{flops:.3g} FLOPs is less than one step of {total_batch_size:,} tokens for d{depth}: "
                         "raise the budget or lower the total batch size")
    tokens = iterations * total_batch_size
    return RunPlan(
        flops=float(flops),
        params_opt=params_opt,
        tokens_opt=tokens_opt,
        loss_opt=float(law.loss(params_opt, tokens_opt)),
        depth=int(depth),
        params=int(params),
        tokens=float(tokens),
        loss=float(law.loss(params, tokens)),
        iterations=int(iterations),
        total_batch_size=int(total_batch_size),
    )
