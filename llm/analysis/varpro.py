"""Approach 3 by variable projection: search the two exponents, solve the three constants.

For fixed exponents (alpha, beta) the law L_hat = E + A N^-alpha + B D^-beta is linear in
c = (E, A, B), so the fit is profiled: the objective at (alpha, beta) is its minimum over c >= 0,
and only that two-dimensional profile is searched (a grid, then L-BFGS-B from its best points).

The objective is the L-BFGS fitter's (`objective`: Huber on log L_hat - log L), and the log
makes the inner problem nonlinear in c: no single least-squares solve is exact. The inner
minimum is reached by Gauss-Newton with iteratively reweighted least squares instead:

- linearise the log around the current c: log L_hat' ~ log L_hat + (L_hat' - L_hat) / L_hat,
  which is linear in c';
- replace the Huber loss by the weighted square touching it at the current residuals,
  weights min(1, delta / |r|);
- solve that non-negative least-squares problem exactly (`non_negative_least_squares`);
- move along the line to its solution by the best of a few step lengths (up to 4x, over-relaxed
  as IRLS's steps are timid near an L1 optimum; clipped at c >= 0), scored on the true objective,
  which therefore never rises.

It starts from the non-negative least-squares fit of relative residuals (L_hat - L) / L, the
first-order form of the log residual. Every step is vectorised over a batch of exponent pairs, so
the grid is scored in one pass. At an inner optimum the profile's gradient is the objective's
partial derivative in (alpha, beta) with c held fixed (the envelope theorem), which gives the
outer search exact gradients without differentiating through the inner solve.

E, A, B >= 0 is the same feasible set as the log-parametrised fit's E, A, B > 0 (closed), and
alpha, beta >= 0 for the same reason as there. A constant that comes out 0 has log -inf in theta.
"""

import itertools

import numpy as np
from scipy.optimize import minimize

from llm.analysis.objective import HUBER_DELTA, huber_slope, scaled_objective

EXPONENT_GRID = np.array(list(itertools.product(np.arange(0.0, 2.01, 0.1), repeat=2)))  # (alpha, beta)
BOOTSTRAP_GRID = np.array(list(itertools.product(np.arange(0.0, 2.01, 0.25), repeat=2)))
REFINED_STARTS = 3  # best grid points refined on the full data
INNER_ITERATIONS = 200  # Gauss-Newton steps at most; most fits stop far earlier
GRID_ITERATIONS = 25  # enough to rank grid points, whose best are then solved in full
INNER_TOLERANCE = 1e-11  # relative decrease of the objective below which a step is the last
STEP_SIZES = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 64, 0.0])  # lengths tried along each step
OUTER_OPTIONS = {"maxiter": 500, "ftol": 1e-14, "gtol": 1e-10}

# Every non-empty set of the three constants that may be positive: an NNLS optimum is the
# unconstrained least-squares solution on one of them.
SUPPORTS = [np.array(mask) for mask in itertools.product((False, True), repeat=3) if any(mask)]


def non_negative_least_squares(design, target, weights):
    """argmin over c >= 0 of sum w (design c - target)^2, for a batch.

    design is (k, n, 3), target and weights (k, n). With three unknowns the optimum is the
    least-squares solution on the support where it is feasible and best, so all seven supports
    are solved at once and compared: exact, and vectorised where an active-set loop is not.
    """
    weighted = design * weights[..., None]
    gram = np.swapaxes(weighted, 1, 2) @ design  # (k, 3, 3)
    moments = (np.swapaxes(weighted, 1, 2) @ target[..., None])[..., 0]  # (k, 3)
    best, best_cost = np.zeros(design.shape[::2]), np.full(design.shape[0], np.inf)
    for support in SUPPORTS:
        coefficients = np.zeros_like(best)
        block = gram[:, support][:, :, support]
        # Columns are scaled to at most 1 and positive, so the Gram blocks are well conditioned
        # unless two columns coincide (alpha = beta = 0); the ridge keeps those solvable.
        ridge = 1e-12 * np.trace(block, axis1=1, axis2=2)[:, None, None] * np.eye(block.shape[1])
        coefficients[:, support] = np.linalg.solve(block + ridge, moments[:, support, None])[..., 0]
        # sum w (Xc - t)^2 = c'Gc - 2 c'm + const: the constant is the same for every support.
        cost = np.einsum("ki,kij,kj->k", coefficients, gram, coefficients) - 2 * (coefficients * moments).sum(-1)
        better = (coefficients >= 0).all(axis=-1) & (cost < best_cost)
        best[better], best_cost[better] = coefficients[better], cost[better]
    return best


def basis(exponents, log_params, log_tokens):
    """(k, n, 3) columns 1, N^-alpha, D^-beta for k exponent pairs."""
    alpha, beta = np.atleast_2d(exponents).T[..., None]
    ones = np.ones((len(alpha), log_params.size))
    return np.stack([ones, np.exp(-alpha * log_params), np.exp(-beta * log_tokens)], axis=-1)


def residuals(design, constants, log_loss):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log((design @ constants[..., None])[..., 0]) - log_loss


def profile_objective(design, constants, log_loss):
    values = scaled_objective(residuals(design, constants, log_loss))
    return np.where(np.isfinite(values), values, np.inf)  # all constants 0 predicts a loss of 0


def project(exponents, log_params, log_tokens, log_loss, start=None, iterations=INNER_ITERATIONS):
    """The constants c = (E, A, B) >= 0 minimising the objective at each exponent pair, and that minimum.

    `start` (k, 3) warm-starts the iteration, e.g. from a neighbouring pair's constants;
    `iterations` caps the Gauss-Newton steps.
    """
    design = basis(exponents, log_params, log_tokens)
    # Columns span many decades (N^-alpha ~ 1e-4): solve for constants times column scale.
    scale = design.max(axis=1, keepdims=True)
    design = design / scale
    loss = np.exp(log_loss)
    if start is None:
        shape = design.shape[:2]
        constants = non_negative_least_squares(design, np.broadcast_to(loss, shape), np.broadcast_to(loss**-2, shape))
    else:
        constants = np.atleast_2d(start) * scale[:, 0]
    value = profile_objective(design, constants, log_loss)
    active = np.arange(len(constants))  # rows still improving; converged ones are left alone
    for _ in range(iterations):
        design_a, constants_a = design[active], constants[active]
        prediction = (design_a @ constants_a[..., None])[..., 0]
        residual = np.log(prediction) - log_loss
        weights = np.minimum(1.0, HUBER_DELTA / np.maximum(np.abs(residual), 1e-300))
        target = non_negative_least_squares(design_a / prediction[..., None], 1 - residual, weights)
        candidates = np.maximum(constants_a + STEP_SIZES[:, None, None] * (target - constants_a), 0)
        values = np.stack([profile_objective(design_a, candidate, log_loss) for candidate in candidates])
        best = values.argmin(axis=0)
        rows = np.arange(len(active))
        new_value = values[best, rows]
        constants[active] = candidates[best, rows]
        converged = value[active] - new_value <= INNER_TOLERANCE * new_value
        value[active] = new_value
        active = active[~converged]
        if not active.size:
            break
    return constants / scale[:, 0], value


def profile_and_gradient(exponents, log_params, log_tokens, log_loss, warm):
    """The profiled objective at one (alpha, beta) and its gradient there (envelope theorem).

    `warm` holds the last constants found, so that each call starts where the previous ended.
    """
    constants, value = project(exponents, log_params, log_tokens, log_loss, warm.get("constants"))
    warm["constants"] = constants
    E, A, B = constants[0]
    alpha, beta = exponents
    params_term, tokens_term = A * np.exp(-alpha * log_params), B * np.exp(-beta * log_tokens)
    prediction = E + params_term + tokens_term
    slope = huber_slope(np.log(prediction) - log_loss) / prediction
    gradient = -np.array([slope @ (params_term * log_params), slope @ (tokens_term * log_tokens)])
    return float(value[0]), gradient / (HUBER_DELTA**2 * log_loss.size)


def refine(starts, log_params, log_tokens, log_loss):
    """The best L-BFGS-B optimum of the profile from any of the starting exponent pairs: (alpha, beta), constants."""
    best_exponents, best_value = None, np.inf
    for start in starts:
        warm = {}
        result = minimize(profile_and_gradient, start, args=(log_params, log_tokens, log_loss, warm),
                          jac=True, method="L-BFGS-B", bounds=[(0, None)] * 2, options=OUTER_OPTIONS)
        if np.isfinite(result.fun) and result.fun < best_value:
            best_exponents, best_value = result.x, result.fun
    constants, _ = project(best_exponents, log_params, log_tokens, log_loss)
    return best_exponents, constants[0]


def best_exponents(grid, count, log_params, log_tokens, log_loss):
    _, values = project(grid, log_params, log_tokens, log_loss, iterations=GRID_ITERATIONS)
    return grid[np.argsort(values)[:count]]


def search(log_params, log_tokens, log_loss, warm_start=None) -> np.ndarray:
    """theta = (log A, log B, log E, alpha, beta) minimising the objective. With `warm_start` (a
    theta fitted to related data, as in a bootstrap) its exponents and the best point of a coarser
    grid are refined."""
    if warm_start is None:
        starts = best_exponents(EXPONENT_GRID, REFINED_STARTS, log_params, log_tokens, log_loss)
    else:
        starts = np.vstack([warm_start[3:], best_exponents(BOOTSTRAP_GRID, 1, log_params, log_tokens, log_loss)])
    (alpha, beta), (E, A, B) = refine(starts, log_params, log_tokens, log_loss)
    with np.errstate(divide="ignore"):
        return np.array([np.log(A), np.log(B), np.log(E), alpha, beta])
