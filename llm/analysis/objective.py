"""The loss both Approach-3 fitters minimise, after Hoffmann et al. (2022) and Besiroglu et al. (2024).

A law L_hat(N, D) = E + A / N^alpha + B / D^beta is scored by the Huber loss (delta = 1e-3) of
log L_hat - log L, summed over the runs. The log makes the residuals relative; the Huber loss keeps
a few bad runs from steering the fit. With delta this small almost every residual lies on the
linear branch, so the fit is close to a least-absolute-deviations fit in log space.

Both fitters report the mean Huber loss in units of delta^2: the same minimiser as the sum, with
values of order one, which is what optimisers' relative tolerances expect.
"""

import numpy as np

HUBER_DELTA = 1e-3


def huber(residuals, delta: float = HUBER_DELTA):
    absolute = np.abs(residuals)
    return np.where(absolute <= delta, 0.5 * residuals**2, delta * (absolute - 0.5 * delta))


def huber_slope(residuals, delta: float = HUBER_DELTA):
    """d huber / d residual."""
    return np.clip(residuals, -delta, delta)


def scaled_objective(residuals, axis=-1):
    """Mean Huber loss of the residuals in units of delta^2 (along `axis`, the runs)."""
    return huber(residuals).mean(axis=axis) / HUBER_DELTA**2
