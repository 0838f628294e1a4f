"""A depth ladder: how loss and CORE improve as the model grows, one run per size.

A miniseries trains each depth at the same tokens : params ratio, so its compute grows with the
model and its table has no FLOPs budget. An IsoFLOP sweep holds a ladder at every budget, all
sizes at the same compute; the largest budget's is the one trained longest, so it is the one taken.
"""

import warnings

import pandas as pd

from llm.analysis.conventions import DEFAULT_PARAMS_CONVENTION, params_column, training_flops
from llm.analysis.table import require_columns


def depth_ladder(
    df: pd.DataFrame,
    *,
    flops_col: str = "flops_budget",
    params_col: str | None = None,
    params_convention: str = DEFAULT_PARAMS_CONVENTION,
    tokens_col: str = "tokens_trained",
    flops_per_token_col: str = "flops_per_token",
) -> pd.DataFrame:
    """The runs of one ladder, smallest model first, with columns params (N), compute (C) and ratio (D/N).

    C is the model's own count (flops_per_token x tokens) when the table has flops_per_token,
    else 6ND. Runs of a table with several FLOPs budgets are narrowed to the largest budget.
    """
    require_columns(df, [tokens_col])
    if flops_col in df.columns and df[flops_col].nunique() > 1:
        largest = df[flops_col].max()
        warnings.warn(f"the table holds {df[flops_col].nunique()} FLOPs budgets; taking the ladder at the "
                      f"largest, {largest:.3g} FLOPs", stacklevel=2)
        df = df[df[flops_col] == largest]
    params = params_column(df, params_col, params_convention).astype(float)
    convention = "model" if flops_per_token_col in df.columns else "6ND"
    compute = training_flops(df, convention, params=params, tokens_col=tokens_col,
                             flops_per_token_col=flops_per_token_col)
    ladder = df.assign(params=params, compute=compute.astype(float), ratio=df[tokens_col] / params)
    return ladder.sort_values("params", kind="stable").reset_index(drop=True)
