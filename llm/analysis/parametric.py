"""Chinchilla Approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to every run at once.

Following Hoffmann et al. (2022) and the replication by Besiroglu et al. (2024), the fit works
in log space with parameters a = log A, b = log B, e = log E, so that

    log L_hat = logsumexp(a - alpha log N, b - beta log D, e),

and minimises the total Huber loss (delta = 1e-3) between log L_hat and log L with L-BFGS-B,
keeping alpha and beta non-negative. The Huber loss keeps a few bad runs from steering the fit;
the log makes the residuals relative. The objective has many poor local minima, hence the grid
of initialisations; the grid is scored in one vectorised pass and only its best points are refined.

Minimising L subject to C = 6 N D gives the compute-optimal allocation

    G = (alpha A / (beta B))^(1 / (alpha + beta)),
    N_opt = G (C/6)^a,  D_opt = (C/6)^b / G,  with a = beta / (alpha + beta), b = alpha / (alpha + beta).

Confidence intervals come from a bootstrap: runs are resampled with replacement, the law is
refitted (warm-started from the full fit), and percentiles are taken of every quantity.
"""

import itertools
import os
from dataclasses import dataclass

# L-BFGS-B calls scipy's bundled OpenBLAS on 5x5 problems, where its worker threads only add
# hand-off latency: on a busy machine a fit ran ten times slower with them. This must be set
# before scipy first loads that library, and defers to a value the user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from llm.analysis.conventions import DEFAULT_PARAMS_CONVENTION, params_column
from llm.analysis.table import require_columns, require_positive

HUBER_DELTA = 1e-3

# Hoffmann et al.'s initialisation grid, as (a, b, e, alpha, beta) rows.
INITIAL_GRID = np.array(
    list(
        itertools.product(
            np.arange(0.0, 26.0, 5.0),  # a
            np.arange(0.0, 26.0, 5.0),  # b
            np.arange(-1.0, 1.01, 0.5),  # e
            np.arange(0.0, 2.01, 0.5),  # alpha
            np.arange(0.0, 2.01, 0.5),  # beta
        )
    )
)
REFINED_STARTS = 10  # best grid points refined by L-BFGS on the full data
BOOTSTRAP_STARTS = 1  # best grid points refined per resample, besides the full-data optimum

# L-BFGS-B judges progress relative to max(|f|, 1). A plain Huber sum with delta = 1e-3 is
# ~1e-6, which would stop it far from the optimum, so the optimiser sees the mean Huber loss in
# units of delta^2 (same minimiser, values of order one).
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9}

# More parameters or more data never hurt, so alpha and beta are kept non-negative. Unbounded, a
# sweep that never brackets the optimum (loss rising with N at every budget) fits alpha < 0, a
# law with no compute-optimal allocation. At alpha = 0 the law says: spend everything on tokens.
THETA_BOUNDS = [(None, None), (None, None), (None, None), (0, None), (0, None)]


LAW_CONSTANTS = ("E", "A", "B", "alpha", "beta")


def ieee(compute) -> float:
    """compute() with numpy's division and overflow warnings off: inf and NaN instead."""
    with np.errstate(all="ignore"):
        return float(compute())


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta and its compute-optimal allocation under C = 6ND."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params, tokens):
        params, tokens = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    # A law with alpha = 0 does not care about N, so N_opt is 0 (G = 0) and everything goes into
    # tokens; beta = 0 is the mirror image; with both 0 the allocation is undefined (NaN). These
    # come out of fits to sweeps that miss the optimum, so they evaluate as IEEE floats, not errors.
    @property
    def a(self) -> float:
        """Exponent of N_opt in C."""
        return ieee(lambda: np.float64(self.beta) / (self.alpha + self.beta))

    @property
    def b(self) -> float:
        """Exponent of D_opt in C."""
        return ieee(lambda: np.float64(self.alpha) / (self.alpha + self.beta))

    @property
    def G(self) -> float:
        return ieee(lambda: np.power(np.float64(self.alpha * self.A) / (self.beta * self.B),
                                     1 / np.float64(self.alpha + self.beta)))

    def optimal_allocation(self, flops):
        """(N_opt, D_opt) for compute `flops`, counted as 6ND."""
        scaled = np.asarray(flops, dtype=float) / 6
        with np.errstate(all="ignore"):
            return self.G * scaled**self.a, scaled**self.b / np.float64(self.G)

    def as_dict(self) -> dict[str, float]:
        """The five constants and the derived a, b and G."""
        return {name: float(getattr(self, name)) for name in (*LAW_CONSTANTS, "a", "b", "G")}


# Hoffmann et al. 2022, Approach 3 (loss in nats on MassiveText with their tokenizer). Good for
# the shape of the allocation when no sweep has been fitted yet; its losses are not val_bpb.
CHINCHILLA_LAW = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def log_prediction_terms(theta, log_params, log_tokens):
    """(a - alpha log N, b - beta log D, e, log L_hat) for parameter rows (a, b, e, alpha, beta).

    theta is one vector of 5 or a (k, 5) batch, in which case every output gains a leading axis.
    """
    a, b, e, alpha, beta = np.asarray(theta, dtype=float).T[..., None]
    params_term = a - alpha * log_params
    tokens_term = b - beta * log_tokens
    return params_term, tokens_term, e, np.logaddexp(np.logaddexp(params_term, tokens_term), e)


def huber(residuals, delta: float = HUBER_DELTA):
    absolute = np.abs(residuals)
    return np.where(absolute <= delta, 0.5 * residuals**2, delta * (absolute - 0.5 * delta))


def objective_and_gradient(theta, log_params, log_tokens, log_loss):
    params_term, tokens_term, e, log_prediction = log_prediction_terms(theta, log_params, log_tokens)
    residuals = log_prediction - log_loss
    # Chain rule: d huber / d residual, times each term's softmax weight in the logsumexp.
    dresidual = np.clip(residuals, -HUBER_DELTA, HUBER_DELTA)
    params_weighted = dresidual * np.exp(params_term - log_prediction)
    tokens_weighted = dresidual * np.exp(tokens_term - log_prediction)
    gradient = np.array([
        params_weighted.sum(),
        tokens_weighted.sum(),
        dresidual @ np.exp(e - log_prediction),
        -params_weighted @ log_params,
        -tokens_weighted @ log_tokens,
    ])
    scale = 1 / (HUBER_DELTA**2 * len(log_loss))
    return scale * huber(residuals).sum(), scale * gradient


def best_grid_points(count: int, log_params, log_tokens, log_loss) -> np.ndarray:
    *_, log_prediction = log_prediction_terms(INITIAL_GRID, log_params, log_tokens)
    scores = huber(log_prediction - log_loss).sum(axis=1)
    return INITIAL_GRID[np.argsort(scores)[:count]]


def shift_intercepts(theta: np.ndarray, params_shift: float, tokens_shift: float) -> np.ndarray:
    """The same law with log N and log D measured from a new origin: a += alpha * shift, b += beta * shift."""
    shifted = np.array(theta, dtype=float)
    shifted[..., 0] += shifted[..., 3] * params_shift
    shifted[..., 1] += shifted[..., 4] * tokens_shift
    return shifted


def refine(starts: np.ndarray, log_params, log_tokens, log_loss) -> np.ndarray:
    """The best L-BFGS optimum reached from any of the starts.

    With log N ~ 20 the intercept a and the exponent alpha are nearly collinear, which makes the
    problem badly conditioned; measuring log N and log D from their means decouples them and
    roughly halves the iterations.
    """
    params_mean, tokens_mean = log_params.mean(), log_tokens.mean()
    centred_data = (log_params - params_mean, log_tokens - tokens_mean, log_loss)
    best_theta, best_value = None, np.inf
    for start in shift_intercepts(starts, -params_mean, -tokens_mean):
        result = minimize(objective_and_gradient, start, args=centred_data,
                          jac=True, method="L-BFGS-B", bounds=THETA_BOUNDS, options=LBFGS_OPTIONS)
        if np.isfinite(result.fun) and result.fun < best_value:
            best_theta, best_value = result.x, result.fun
    return shift_intercepts(best_theta, params_mean, tokens_mean)


def percentile_interval(samples: np.ndarray, confidence: float):
    """Central percentile interval along the first axis (the bootstrap resamples)."""
    tail = 100 * (1 - confidence) / 2
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def law_from_theta(theta: np.ndarray) -> LossLaw:
    a, b, e, alpha, beta = theta
    return LossLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                   alpha=float(alpha), beta=float(beta))


@dataclass(frozen=True)
class ParametricFit:
    """The fitted law, percentile intervals, the bootstrap laws and the fitted points.

    `ci` maps each of E, A, B, alpha, beta, a, b, G to (low, high). `bootstrap` has one row per
    resample with those quantities; `points` has columns params, tokens, loss.
    """

    law: LossLaw
    ci: dict[str, tuple[float, float]]
    bootstrap: pd.DataFrame
    points: pd.DataFrame
    confidence: float

    def allocation_band(self, flops) -> pd.DataFrame:
        """Percentile band of N_opt and D_opt at each compute, across the bootstrap laws."""
        flops = np.atleast_1d(np.asarray(flops, dtype=float))
        laws = [LossLaw(**row) for row in self.bootstrap[list(LAW_CONSTANTS)].to_dict(orient="records")]
        params, tokens = np.array([law.optimal_allocation(flops) for law in laws]).transpose(1, 0, 2)
        with np.errstate(invalid="ignore"):  # degenerate laws' 0 and inf allocations interpolate to NaN
            params_low, params_high = percentile_interval(params, self.confidence)
            tokens_low, tokens_high = percentile_interval(tokens, self.confidence)
        return pd.DataFrame({"flops": flops, "params_low": params_low, "params_high": params_high,
                             "tokens_low": tokens_low, "tokens_high": tokens_high})

    def summary(self) -> dict:
        """A JSON-ready dict: the law's quantities, `ci`, and the sample sizes."""
        return {
            **self.law.as_dict(),
            "ci": {name: list(bounds) for name, bounds in self.ci.items()},
            "confidence": self.confidence,
            "n_points": len(self.points),
            "n_boot": len(self.bootstrap),
        }


def fit_parametric(
    df: pd.DataFrame,
    *,
    params_col: str | None = None,
    params_convention: str = DEFAULT_PARAMS_CONVENTION,
    tokens_col: str = "tokens_trained",
    loss_col: str = "val_bpb",
    n_boot: int = 100,
    seed: int = 0,
    confidence: float = 0.95,
) -> ParametricFit:
    """Fit L(N, D) to the table's runs and bootstrap percentile intervals for every quantity.

    N is `params_col` when given, else computed with `params_convention`.
    """
    require_columns(df, [tokens_col, loss_col])
    points = pd.DataFrame({
        "params": params_column(df, params_col, params_convention).to_numpy(),
        "tokens": df[tokens_col].to_numpy(),
        "loss": df[loss_col].to_numpy(),
    }).astype(float)
    if len(points) < 5:
        raise ValueError(f"a parametric fit has 5 parameters and needs more than {len(points)} runs")
    require_positive(points)
    if n_boot < 0:
        raise ValueError(f"the number of bootstrap resamples cannot be negative, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    logs = np.log(points.to_numpy())
    log_params, log_tokens, log_loss = logs.T

    starts = best_grid_points(REFINED_STARTS, log_params, log_tokens, log_loss)
    theta = refine(starts, log_params, log_tokens, log_loss)
    law = law_from_theta(theta)

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(logs), len(logs))
        resampled = (log_params[rows], log_tokens[rows], log_loss[rows])
        resample_starts = np.vstack([theta, best_grid_points(BOOTSTRAP_STARTS, *resampled)])
        samples.append(law_from_theta(refine(resample_starts, *resampled)).as_dict())
    bootstrap = pd.DataFrame(samples, columns=list(law.as_dict()))
    ci = {}
    if n_boot > 0:
        lows, highs = percentile_interval(bootstrap.to_numpy(), confidence)
        ci = {name: (float(low), float(high)) for name, low, high in zip(bootstrap.columns, lows, highs)}
    return ParametricFit(law=law, ci=ci, bootstrap=bootstrap, points=points, confidence=confidence)
