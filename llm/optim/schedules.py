"""How the optimizer's hyperparameters move over training, as functions of the step.

The learning rate warms up linearly, holds, then decays linearly to a fraction of itself over the
last part of training; Muon's momentum ramps up over the first steps; weight decay falls linearly
to zero. `apply_schedules` writes all three into an optimizer's param groups for one step, starting
from the `initial_lr` and `initial_weight_decay` that build_optimizer stored in every group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llm.config.schema import OptimConfig


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float, warmdown_ratio: float,
                  final_lr_frac: float) -> float:
    """Factor on every initial learning rate at `step` (0-based) of `num_iterations`."""
    warmup_steps = round(warmup_ratio * num_iterations)
    warmdown_steps = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown_steps:
        return 1.0
    remaining = (num_iterations - step) / warmdown_steps  # 1 where the warmdown starts, 0 at the end
    return remaining + (1 - remaining) * final_lr_frac


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, warmup_steps: int = 300) -> float:
    """Muon's momentum: linear from `start` to `end` over the first `warmup_steps`, then `end`."""
    progress = min(step / warmup_steps, 1) if warmup_steps > 0 else 1
    return (1 - progress) * start + progress * end


def weight_decay_at(step: int, num_iterations: int, initial: float) -> float:
    """Weight decay falling linearly from `initial` at step 0 to zero at the end of training."""
    return initial * (1 - step / num_iterations)


def apply_schedules(optimizer: torch.optim.Optimizer, step: int, num_iterations: int,
                    cfg: OptimConfig) -> float:
    """Set every param group's lr and weight decay, and Muon's momentum, for `step`; returns the lr multiplier."""
    multiplier = lr_multiplier(step, num_iterations, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
    momentum = muon_momentum(step, cfg.muon_momentum_start, cfg.muon_momentum_end,
                             cfg.muon_momentum_warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
        group["weight_decay"] = weight_decay_at(step, num_iterations, group["initial_weight_decay"])
        if group["kind"] == "muon":
            group["momentum"] = momentum
    return multiplier
