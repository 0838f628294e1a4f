"""Optimizers: Muon + AdamW (single-process and sharded across ranks), their groups and schedules."""

from llm.optim.build import OPTIMIZER_NAMES, ROLES, build_optimizer
from llm.optim.distributed import DistMuonAdamW
from llm.optim.muon_adamw import MuonAdamW
from llm.optim.schedules import apply_schedules, lr_multiplier, muon_momentum, weight_decay_at

__all__ = [
    "OPTIMIZER_NAMES",
    "ROLES",
    "DistMuonAdamW",
    "MuonAdamW",
    "apply_schedules",
    "build_optimizer",
    "lr_multiplier",
    "muon_momentum",
    "weight_decay_at",
]
