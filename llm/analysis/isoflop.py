"""Chinchilla Approach 2: IsoFLOP profiles.

Each compute budget C is spent on several model sizes. Within a budget, loss against log N is
close to a parabola, whose vertex gives the compute-optimal N for that C. Power laws through
the per-budget optima, N_opt = k_N C^a and D_opt = k_D C^b, then extrapolate to other budgets.
If a is close to b, the optimal tokens-per-parameter ratio D/N is the same at every scale.

D at a budget's optimum depends on the FLOPs convention (see `conventions`):
- ``model``: D is read off the runs themselves. Their token counts were set from the model's
  flops_per_token, so log D is regressed on log N within the budget (for a fixed budget
  D ~ C / N, a straight line in log-log) and evaluated at N_opt.
- ``6ND``: D = C / (6 N_opt), needing no token column.

A sweep whose model sizes miss the optimum has no usable vertex: loss rises (or falls) across
every size, the parabola is concave or has its minimum outside the sampled range. Such budgets
are skipped, or with ``fallback="raw_min"`` represented by their lowest-loss run, which at the
edge of the sweep is only a bound on the optimum; warnings say which side to extend.
"""

import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llm.analysis.conventions import DEFAULT_PARAMS_CONVENTION, FLOPS_CONVENTIONS, params_column
from llm.analysis.table import require_columns, require_positive

MIN_POINTS_PER_BUDGET = 3  # a parabola has three coefficients
FALLBACKS = (None, "raw_min")


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x ** exponent, fitted by least squares in log space."""

    exponent: float
    coefficient: float

    @classmethod
    def fit(cls, x, y) -> "PowerLaw":
        exponent, log_coefficient = np.polyfit(np.log(x), np.log(y), 1)
        return cls(float(exponent), float(np.exp(log_coefficient)))

    def __call__(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


@dataclass(frozen=True)
class IsoFlopFit:
    """Per-budget optima and the power laws through them.

    `budgets` has one row per fitted budget: flops, n_points, params_opt, tokens_opt, loss_opt,
    extrapolated (the sampled sizes do not bracket the optimum), method (`parabola` for the
    vertex, `raw_min` for the best run), sizes_below and sizes_above (distinct sampled sizes on
    either side of the optimum), interior (a parabola vertex with sizes on both sides), ratio (tokens per parameter) and the parabola
    `loss = curvature * x^2 + slope * x + intercept` with x = log10 N, concave for some fallbacks.
    `points` holds the runs used (flops, params, tokens, loss); `skipped` maps each budget left
    out to the reason. The laws are None when fewer than two budgets could be fitted.
    """

    budgets: pd.DataFrame
    points: pd.DataFrame
    params_law: PowerLaw | None
    tokens_law: PowerLaw | None
    reference_flops: float
    ratio_at_reference: float
    ratio_mean: float
    ratio_std: float
    flops_convention: str
    skipped: dict[float, str] = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-ready dict (NaN becomes None)."""

        def clean(value):
            return None if value is None or (isinstance(value, float) and np.isnan(value)) else value

        laws_fitted = self.params_law is not None
        return {
            "budgets": json.loads(self.budgets.to_json(orient="records")),
            "interior_budgets": int(self.budgets["interior"].sum()),
            "a": self.params_law.exponent if laws_fitted else None,
            "b": self.tokens_law.exponent if laws_fitted else None,
            "params_coefficient": self.params_law.coefficient if laws_fitted else None,
            "tokens_coefficient": self.tokens_law.coefficient if laws_fitted else None,
            "reference_flops": clean(self.reference_flops),
            "optimal_ratio": clean(self.ratio_at_reference),
            "ratio_mean": clean(self.ratio_mean),
            "ratio_std": clean(self.ratio_std),
            "flops_convention": self.flops_convention,
            "skipped": {f"{flops:.6g}": reason for flops, reason in self.skipped.items()},
        }


def parabola_optimum(points: pd.DataFrame, flops: float, flops_convention: str, coefficients) -> dict:
    """The vertex of a budget's convex parabola, with D at that N."""
    curvature, slope, intercept = coefficients
    log_params = np.log10(points["params"].to_numpy(float))
    log_params_opt = -slope / (2 * curvature)
    params_opt = 10**log_params_opt
    if flops_convention == "6ND":
        tokens_opt = flops / (6 * params_opt)
    else:
        token_slope, token_intercept = np.polyfit(log_params, np.log10(points["tokens"]), 1)
        tokens_opt = 10 ** (token_intercept + token_slope * log_params_opt)
    return {
        "params_opt": params_opt,
        "tokens_opt": tokens_opt,
        "loss_opt": intercept - slope**2 / (4 * curvature),
        "extrapolated": not log_params.min() <= log_params_opt <= log_params.max(),
        "method": "parabola",
    }


def best_run(points: pd.DataFrame, flops: float, flops_convention: str) -> dict:
    """The budget's lowest-loss run. At either end of the sampled sizes it only bounds the optimum,
    which then lies beyond the sweep; `extrapolated` flags that, as it does an outlying vertex."""
    best = points.loc[points["loss"].idxmin()]
    tokens = flops / (6 * best["params"]) if flops_convention == "6ND" else best["tokens"]
    return {
        "params_opt": best["params"],
        "tokens_opt": tokens,
        "loss_opt": best["loss"],
        "extrapolated": best["params"] in (points["params"].min(), points["params"].max()),
        "method": "raw_min",
    }


def fit_budget(points: pd.DataFrame, flops: float, flops_convention: str, fallback: str | None) -> dict | str:
    """One budget's optimum as a row, or the reason it has none.

    The parabola's vertex is the optimum. A concave profile has no vertex; with the `raw_min`
    fallback, that budget, and one whose vertex lies outside the sampled sizes, take their best run.
    """
    sizes = np.unique(points["params"]).size
    if sizes < MIN_POINTS_PER_BUDGET:
        return f"{sizes} distinct model sizes, need {MIN_POINTS_PER_BUDGET}"
    coefficients = np.polyfit(np.log10(points["params"].to_numpy(float)), points["loss"].to_numpy(float), 2)
    curvature = coefficients[0]
    optimum = parabola_optimum(points, flops, flops_convention, coefficients) if curvature > 0 else None
    if optimum is None and fallback is None:
        return f"loss is not convex in log N (curvature {curvature:.3g}), so it has no minimum"
    if fallback == "raw_min" and (optimum is None or optimum["extrapolated"]):
        optimum = best_run(points, flops, flops_convention)
    log_sizes = np.log10(np.unique(points["params"]))
    log_optimum = np.log10(optimum["params_opt"])
    below, above = int((log_sizes < log_optimum).sum()), int((log_sizes > log_optimum).sum())
    return {
        "flops": flops,
        "n_points": len(points),
        **optimum,
        "sizes_below": below,
        "sizes_above": above,
        # The sweep found this budget's optimum, rather than bounding it: a parabola's vertex with
        # measured sizes on both sides of it.
        "interior": bool(optimum["method"] == "parabola" and below > 0 and above > 0),
        "ratio": optimum["tokens_opt"] / optimum["params_opt"],
        "curvature": curvature,
        "slope": coefficients[1],
        "intercept": coefficients[2],
    }


def budget_warning(row: dict, points: pd.DataFrame) -> str | None:
    """What a user must know about a budget's optimum: that it is a fallback, or not bracketed."""
    if row["method"] == "parabola":
        if not row["extrapolated"]:
            return None
        return (f"budget {row['flops']:.3g} FLOPs: optimum N={row['params_opt']:.3g} lies outside the "
                "sampled model sizes; widen the sweep there")
    message = (f"budget {row['flops']:.3g} FLOPs: no parabola minimum within the sampled sizes; "
               f"using its best run, N={row['params_opt']:.3g}")
    if not row["extrapolated"]:
        return message
    side, direction, extension = (("smallest", "below", "smaller") if row["params_opt"] == points["params"].min()
                                  else ("largest", "above", "larger"))
    return (f"{message}, the {side} model: the optimum lies {direction} it, extend the sweep to "
            f"{extension} models")


def fit_isoflop(
    df: pd.DataFrame,
    *,
    flops_col: str = "flops_budget",
    params_col: str | None = None,
    params_convention: str = DEFAULT_PARAMS_CONVENTION,
    loss_col: str = "val_bpb",
    tokens_col: str | None = "tokens_trained",
    flops_convention: str = "model",
    fallback: str | None = None,
) -> IsoFlopFit:
    """Fit every budget's parabola, then power laws N_opt(C) and D_opt(C) through the optima.

    N is `params_col` when given, else computed with `params_convention`. Budgets with fewer
    than three model sizes are skipped with a warning, and so are non-convex profiles unless
    `fallback="raw_min"`, which gives every budget without a parabola minimum inside its sampled
    sizes its best run instead (the `method` column says which). Optima the sweep does not
    bracket are flagged `extrapolated` with a warning. The optimal ratio is reported at the
    geometric mean of the smallest and largest fitted budgets, along with the mean and standard
    deviation of the per-budget ratios.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; choose None or {', '.join(map(repr, FALLBACKS[1:]))}")
    if flops_convention not in FLOPS_CONVENTIONS:
        raise ValueError(
            f"unknown FLOPs convention {flops_convention!r}; choose one of {', '.join(FLOPS_CONVENTIONS)}"
        )
    if flops_convention == "model" and tokens_col is None:
        raise ValueError("the 'model' FLOPs convention reads tokens from the runs; give a tokens column or use '6ND'")
    columns = {flops_col: "flops", loss_col: "loss"}
    if flops_convention == "model":
        columns[tokens_col] = "tokens"
    require_columns(df, list(columns))
    points = df[list(columns)].rename(columns=columns)
    points["params"] = params_column(df, params_col, params_convention).to_numpy()
    points = points.astype(float)
    if points.empty:
        raise ValueError("results table is empty; nothing to fit")
    require_positive(points)

    optima, skipped = [], {}
    for flops, budget_points in points.groupby("flops", sort=True):
        outcome = fit_budget(budget_points, float(flops), flops_convention, fallback)
        if isinstance(outcome, str):
            skipped[float(flops)] = outcome
            warnings.warn(f"skipping budget {flops:.3g} FLOPs: {outcome}", stacklevel=2)
            continue
        optima.append(outcome)
        message = budget_warning(outcome, budget_points)
        if message:
            warnings.warn(message, stacklevel=2)
    if not optima:
        raise ValueError("no budget could be fitted: each needs 3 model sizes with a convex loss profile "
                         "(fallback='raw_min' takes the best run of a non-convex one)")
    budgets = pd.DataFrame(optima)

    params_law = tokens_law = None
    reference_flops = ratio_at_reference = float("nan")
    if len(budgets) >= 2:
        params_law = PowerLaw.fit(budgets["flops"], budgets["params_opt"])
        tokens_law = PowerLaw.fit(budgets["flops"], budgets["tokens_opt"])
        reference_flops = float(np.sqrt(budgets["flops"].min() * budgets["flops"].max()))
        ratio_at_reference = float(tokens_law(reference_flops) / params_law(reference_flops))
    else:
        warnings.warn("only one budget fitted; power laws need at least two", stacklevel=2)
    return IsoFlopFit(
        budgets=budgets,
        points=points,
        params_law=params_law,
        tokens_law=tokens_law,
        reference_flops=reference_flops,
        ratio_at_reference=ratio_at_reference,
        ratio_mean=float(budgets["ratio"].mean()),
        ratio_std=float(budgets["ratio"].std()),
        flops_convention=flops_convention,
        skipped=skipped,
    )
