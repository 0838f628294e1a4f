"""Exact model sizes by depth, for tools that choose a depth (the scaling-law planner).

Depth is the one dial of model size; everything else comes from the composed config, so the
counts here are the ones training will report for `model.depth=<depth>` with the same overrides.
"""

from functools import lru_cache

from omegaconf import OmegaConf

from llm.config import compose_run, derived


@lru_cache(maxsize=None)
def base_config(overrides: tuple[str, ...]):
    # Composing takes a Hydra initialisation; a planner asks about dozens of depths, so compose
    # once per set of overrides and only vary the depth afterwards.
    return compose_run(list(overrides))


@lru_cache(maxsize=None)
def counts_for_depth(depth: int, overrides: tuple[str, ...] = ()) -> tuple[derived.ModelShape, dict[str, int]]:
    cfg = OmegaConf.merge(base_config(overrides), {"model": {"depth": depth}})
    shape = derived.model_shape(OmegaConf.to_container(cfg.model, resolve=True), cfg.data.vocab_size)
    return shape, derived.parameter_counts(shape)


def scaling_params_for_depth(depth: int, overrides: tuple[str, ...] = ()) -> int:
    """Transformer matrices plus lm_head (the kaplan convention the fits default to)."""
    _, counts = counts_for_depth(depth, tuple(overrides))
    return derived.scaling_params(counts)


def flops_per_token_for_depth(depth: int, overrides: tuple[str, ...] = ()) -> int:
    """Training FLOPs per token, the count a FLOPs budget divides by to set the iterations."""
    shape, counts = counts_for_depth(depth, tuple(overrides))
    return derived.flops_per_token(shape, counts)
