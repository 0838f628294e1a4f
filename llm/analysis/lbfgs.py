"""Approach 3 by joint L-BFGS over all five constants, as Hoffmann et al. and Besiroglu et al. fit it.

The law is written in log space with a = log A, b = log B, e = log E, so that

    log L_hat = logsumexp(a - alpha log N, b - beta log D, e),

and the Huber objective of `objective` is minimised with L-BFGS-B over theta = (a, b, e, alpha,
beta), keeping alpha and beta non-negative. The objective has many poor local minima, hence
Hoffmann et al.'s grid of initialisations; the grid is scored in one vectorised pass and only its
best points are refined.
"""

import itertools
import os

# L-BFGS-B calls scipy's bundled OpenBLAS on 5x5 problems, where its worker threads only add
# hand-off latency: on a busy machine a fit ran ten times slower with them. This must be set
# before scipy first loads that library, and defers to a value the user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from llm.analysis.objective import HUBER_DELTA, huber, huber_slope, scaled_objective  # noqa: E402

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

# L-BFGS-B judges progress relative to max(|f|, 1): a plain Huber sum with delta = 1e-3 is ~1e-6,
# which would stop it far from the optimum, hence the scaled objective and these tolerances.
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9}

# More parameters or more data never hurt, so alpha and beta are kept non-negative. Unbounded, a
# sweep that never brackets the optimum (loss rising with N at every budget) fits alpha < 0, a
# law with no compute-optimal allocation. At alpha = 0 the law says: spend everything on tokens.
THETA_BOUNDS = [(None, None), (None, None), (None, None), (0, None), (0, None)]


def log_prediction_terms(theta, log_params, log_tokens):
    """(a - alpha log N, b - beta log D, e, log L_hat) for parameter rows (a, b, e, alpha, beta).

    theta is one vector of 5 or a (k, 5) batch, in which case every output gains a leading axis.
    """
    a, b, e, alpha, beta = np.asarray(theta, dtype=float).T[..., None]
    params_term = a - alpha * log_params
    tokens_term = b - beta * log_tokens
    return params_term, tokens_term, e, np.logaddexp(np.logaddexp(params_term, tokens_term), e)


def objective_and_gradient(theta, log_params, log_tokens, log_loss):
    params_term, tokens_term, e, log_prediction = log_prediction_terms(theta, log_params, log_tokens)
    residuals = log_prediction - log_loss
    # Chain rule: d huber / d residual, times each term's softmax weight in the logsumexp.
    dresidual = huber_slope(residuals)
    params_weighted = dresidual * np.exp(params_term - log_prediction)
    tokens_weighted = dresidual * np.exp(tokens_term - log_prediction)
    gradient = np.array([
        params_weighted.sum(),
        tokens_weighted.sum(),
        dresidual @ np.exp(e - log_prediction),
        -params_weighted @ log_params,
        -tokens_weighted @ log_tokens,
    ])
    return scaled_objective(residuals), gradient / (HUBER_DELTA**2 * len(log_loss))


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


def search(log_params, log_tokens, log_loss, warm_start=None) -> np.ndarray:
    """theta = (log A, log B, log E, alpha, beta) minimising the objective. With `warm_start` (a
    theta fitted to related data, as in a bootstrap) only it and the best grid point are refined."""
    if warm_start is None:
        starts = best_grid_points(REFINED_STARTS, log_params, log_tokens, log_loss)
    else:
        starts = np.vstack([warm_start, best_grid_points(BOOTSTRAP_STARTS, log_params, log_tokens, log_loss)])
    return refine(starts, log_params, log_tokens, log_loss)
