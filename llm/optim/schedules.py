"""How the optimizer's hyperparameters move over training, as functions of the step.

The learning rate warms up linearly, holds, then decays linearly to a fraction of itself over the
last part of training; Muon's momentum ramps up over the first steps; weight decay falls linearly
to zero. `apply_schedules` writes all three into an optimizer's param groups for one step, starting
from the `initial_lr` and `initial_weight_decay` that build_optimizer stored in every group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llm.config.schema import OptimConfig


@dataclass(frozen=True)
class Ramp:
    """A straight line through `floor` at step `floor_step` and 1 at step `peak_step` (either side
    of it): the multiplier is 1 weighted by how far the step has come from the floor."""

    floor_step: int
    peak_step: int
    floor: float

    def __call__(self, step: int) -> float:
        towards_peak = (step - self.floor_step) / (self.peak_step - self.floor_step)
        return towards_peak + (1 - towards_peak) * self.floor


def at_peak(step: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Phase:
    name: str
    last_step: float  # the phase covers the steps after the previous phase's, up to this one
    multiplier: Callable[[int], float]


def lr_phases(num_iterations: int, warmup_ratio: float, warmdown_ratio: float,
              final_lr_frac: float) -> list[Phase]:
    """The learning-rate schedule as piecewise-linear phases, in step order.

    Warmup climbs from 0 (one step before training) to 1 at its last step; the constant phase
    holds 1 up to and including the step where the warmdown starts; the warmdown falls from 1
    there to `final_lr_frac` at `num_iterations`. Phase lengths are rounded half to even.
    """
    warmup_steps = round(warmup_ratio * num_iterations)
    warmdown_start = num_iterations - round(warmdown_ratio * num_iterations)
    return [
        Phase("warmup", warmup_steps - 1, Ramp(floor_step=-1, peak_step=warmup_steps - 1, floor=0.0)),
        Phase("constant", warmdown_start, at_peak),
        Phase("warmdown", math.inf, Ramp(floor_step=num_iterations, peak_step=warmdown_start,
                                         floor=final_lr_frac)),
    ]


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float, warmdown_ratio: float,
                  final_lr_frac: float) -> float:
    """Factor on every initial learning rate at `step` (0-based) of `num_iterations`."""
    phases = lr_phases(num_iterations, warmup_ratio, warmdown_ratio, final_lr_frac)
    return next(phase for phase in phases if step <= phase.last_step).multiplier(step)


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
