"""Assemble the optimizer's param groups from the model's parameter roles.

The model sorts its parameters into ROLES and the config layer computes one learning rate per
role with every scale already applied; this module only decides which update rule and which
hyperparameters each role gets:

- muon_adamw: Muon for the transformer's matrices (one group per shape, so each group stacks),
  AdamW for the embeddings, the unembedding and the per-layer scalars;
- adamw: the same AdamW groups, plus the matrices on AdamW with weight decay, as a baseline.

Every group also records `initial_lr` and `initial_weight_decay`, the values that
schedules.apply_schedules scales at each step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import Parameter

from llm.optim.distributed import DistMuonAdamW
from llm.optim.muon_adamw import MuonAdamW

if TYPE_CHECKING:
    from llm.config.schema import OptimConfig

ROLES = ("lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "matrices")
OPTIMIZER_NAMES = ("muon_adamw", "adamw")


def adamw_group(params: list[Parameter], lr: float, beta1: float, cfg: OptimConfig,
                weight_decay: float) -> dict:
    return dict(kind="adamw", params=params, lr=lr, betas=(beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                weight_decay=weight_decay)


def muon_groups(matrices: list[Parameter], lr: float, cfg: OptimConfig, weight_decay: float) -> list[dict]:
    """One Muon group per distinct matrix shape, in sorted shape order."""
    return [
        dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=lr,
             momentum=cfg.muon_momentum_end, ns_steps=cfg.muon_ns_steps, beta2=cfg.muon_beta2,
             weight_decay=weight_decay)
        for shape in sorted({p.shape for p in matrices})
    ]


def check_keys(what: str, keys) -> None:
    missing, unknown = set(ROLES) - set(keys), set(keys) - set(ROLES)
    if missing or unknown:
        raise ValueError(f"{what} must have exactly the keys {list(ROLES)}; "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")


def build_optimizer(roles: dict[str, list[Parameter]], learning_rates: dict[str, float], weight_decay: float,
                    cfg: OptimConfig, distributed: bool) -> torch.optim.Optimizer:
    """The optimizer named by cfg.name over the model's parameters, grouped by role.

    `weight_decay` applies to the matrices only; `distributed` selects DistMuonAdamW, which
    averages gradients across ranks itself.
    """
    if cfg.name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {cfg.name!r}; set optim.name to one of {list(OPTIMIZER_NAMES)}")
    check_keys("roles", roles)
    check_keys("learning_rates", learning_rates)

    groups = [
        adamw_group(roles[role], learning_rates[role],
                    cfg.x0_beta1 if role == "x0_lambdas" else cfg.adam_beta1, cfg, weight_decay=0.0)
        for role in ROLES if role != "matrices"
    ]
    if cfg.name == "muon_adamw":
        groups += muon_groups(roles["matrices"], learning_rates["matrices"], cfg, weight_decay)
    else:
        groups.append(adamw_group(roles["matrices"], learning_rates["matrices"], cfg.adam_beta1, cfg,
                                  weight_decay))

    groups = [group for group in groups if group["params"]]
    for group in groups:
        group["initial_lr"] = group["lr"]
        group["initial_weight_decay"] = group["weight_decay"]
    optimizer_class = DistMuonAdamW if distributed else MuonAdamW
    return optimizer_class(groups)
