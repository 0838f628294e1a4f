"""What counts as model size N and training compute C in a scaling law.

Scaling-law papers disagree on both, and the choice moves the fitted exponents, so each is a
named option computed from the collector's columns.

Parameter conventions (N):

- ``total``: every parameter (Hoffmann et al. 2022, "Chinchilla"): `params_total`.
- ``kaplan``: non-embedding parameters, keeping the unembedding because it is a matmul that
  costs compute per token (Kaplan et al. 2020): `params_transformer + params_lm_head`. This is
  the default "scaling params": lookup tables (token and value embeddings) cost no matmul FLOPs,
  and counting them bends the curves for small models.
- ``transformer``: attention and MLP matrices only: `params_transformer`.

FLOPs conventions (C):

- ``6ND``: the textbook estimate, 6 FLOPs per parameter per token (2 forward, 4 backward).
  Closed-form compute-optimal allocations (Approach 3) assume it.
- ``model``: the model's own count, `flops_per_token * tokens`, which adds attention FLOPs and
  uses the FLOPs-relevant parameters. Training with a FLOPs budget sets its iterations with this
  count, so a sweep's `flops_budget` column is in this convention.
"""

import pandas as pd

from llm.analysis.table import require_columns

PARAMS_CONVENTIONS: dict[str, tuple[str, ...]] = {
    "total": ("params_total",),
    "kaplan": ("params_transformer", "params_lm_head"),
    "transformer": ("params_transformer",),
}
DEFAULT_PARAMS_CONVENTION = "kaplan"

FLOPS_CONVENTIONS = ("6ND", "model")


def scaling_params(df: pd.DataFrame, convention: str = DEFAULT_PARAMS_CONVENTION) -> pd.Series:
    """N for each run under the named parameter convention (the sum of its columns)."""
    if convention not in PARAMS_CONVENTIONS:
        raise ValueError(
            f"unknown parameter convention {convention!r}; choose one of {', '.join(PARAMS_CONVENTIONS)}"
        )
    columns = list(PARAMS_CONVENTIONS[convention])
    require_columns(df, columns)
    return df[columns].sum(axis=1).rename(f"params_{convention}")


def params_column(
    df: pd.DataFrame, params_col: str | None = None, convention: str = DEFAULT_PARAMS_CONVENTION
) -> pd.Series:
    """N for each run: the named column when one is given (external tables), else the convention."""
    if params_col is None:
        return scaling_params(df, convention)
    require_columns(df, [params_col])
    return df[params_col]


def training_flops(
    df: pd.DataFrame,
    convention: str,
    *,
    params: pd.Series | None = None,
    tokens_col: str = "tokens_trained",
    flops_per_token_col: str = "flops_per_token",
) -> pd.Series:
    """Compute C spent by each run: 6 * N * D, or the model's flops_per_token * D.

    `params` is N for the 6ND convention (default: the kaplan scaling params).
    """
    if convention not in FLOPS_CONVENTIONS:
        raise ValueError(
            f"unknown FLOPs convention {convention!r}; choose one of {', '.join(FLOPS_CONVENTIONS)}"
        )
    require_columns(df, [tokens_col])
    tokens = df[tokens_col].astype(float)
    if convention == "model":
        require_columns(df, [flops_per_token_col])
        return (df[flops_per_token_col] * tokens).rename("flops_model")
    if params is None:
        params = scaling_params(df)
    return (6.0 * params * tokens).rename("flops_6ND")
