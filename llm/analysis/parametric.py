"""Chinchilla Approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to every run at once.

Following Hoffmann et al. (2022) and the replication by Besiroglu et al. (2024), the fit minimises
the total Huber loss (delta = 1e-3) between log L_hat and log L (`objective`), with alpha and beta
non-negative. Two fitters minimise it:

- ``lbfgs`` (`lbfgs`): all five constants at once by L-BFGS-B from a grid of initialisations,
  as the papers do;
- ``varpro`` (`varpro`): variable projection, searching only (alpha, beta) and solving E, A, B
  >= 0 for each pair.

Minimising L subject to C = 6 N D gives the compute-optimal allocation

    G = (alpha A / (beta B))^(1 / (alpha + beta)),
    N_opt = G (C/6)^a,  D_opt = (C/6)^b / G,  with a = beta / (alpha + beta), b = alpha / (alpha + beta).

Confidence intervals come from a bootstrap: runs are resampled with replacement, the law is
refitted (warm-started from the full fit), and percentiles are taken of every quantity.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llm.analysis import lbfgs, varpro
from llm.analysis.conventions import DEFAULT_PARAMS_CONVENTION, params_column
from llm.analysis.table import require_columns, require_positive

# Each fitter maps log N, log D, log L (and optionally a warm start) to theta = (log A, log B,
# log E, alpha, beta).
FITTERS = {"lbfgs": lbfgs.search, "varpro": varpro.search}
DEFAULT_FITTER = "lbfgs"

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
    fitter: str = DEFAULT_FITTER,
) -> ParametricFit:
    """Fit L(N, D) to the table's runs and bootstrap percentile intervals for every quantity.

    N is `params_col` when given, else computed with `params_convention`; `fitter` names one of
    FITTERS.
    """
    if fitter not in FITTERS:
        raise ValueError(f"unknown fitter {fitter!r}; choose one of {', '.join(FITTERS)}")
    search = FITTERS[fitter]
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

    theta = search(log_params, log_tokens, log_loss)
    law = law_from_theta(theta)

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(logs), len(logs))
        resampled = (log_params[rows], log_tokens[rows], log_loss[rows])
        samples.append(law_from_theta(search(*resampled, warm_start=theta)).as_dict())
    bootstrap = pd.DataFrame(samples, columns=list(law.as_dict()))
    ci = {}
    if n_boot > 0:
        lows, highs = percentile_interval(bootstrap.to_numpy(), confidence)
        ci = {name: (float(low), float(high)) for name, low, high in zip(bootstrap.columns, lows, highs)}
    return ParametricFit(law=law, ci=ci, bootstrap=bootstrap, points=points, confidence=confidence)
