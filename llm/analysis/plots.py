"""Figures of the scaling-law fits. Every function returns a matplotlib Figure and, given a
path, also saves it as a PNG.

Without a display (clusters, CI) and without a backend chosen by the user or by Jupyter
(which sets MPLBACKEND), figures render with Agg so that nothing tries to open a window.
"""

import os
import sys

import matplotlib

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from llm.analysis.isoflop import IsoFlopFit  # noqa: E402
from llm.analysis.parametric import ParametricFit  # noqa: E402


def budget_colours(count: int):
    """One colour per budget, dark (small) to bright (large), skipping the palest end."""
    return plt.get_cmap("plasma")(np.arange(count) / (count + 1))


def finish(fig: Figure, path) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


# How each kind of optimum is marked: a parabola's vertex, or a fallback's best run.
OPTIMUM_MARKERS = {"parabola": "*", "raw_min": "D"}


def plot_isoflop(fit: IsoFlopFit, *, path=None) -> Figure:
    """Loss against N for each budget, with the fitted parabola and its optimum: a star for a
    vertex, a diamond for a budget's best run (the raw_min fallback; its parabola, dashed, shows
    why). Budgets that were skipped show their points only."""
    fig, ax = plt.subplots(figsize=(7, 5))
    budgets = sorted(fit.points["flops"].unique())
    optima = fit.budgets.set_index("flops")
    for flops, colour in zip(budgets, budget_colours(len(budgets))):
        runs = fit.points[fit.points["flops"] == flops].sort_values("params")
        ax.plot(runs["params"], runs["loss"], "o", color=colour, label=f"{flops:.2g} FLOPs")
        if flops not in optima.index:
            continue
        optimum = optima.loc[flops]
        # The parabola over the sampled sizes and a quarter beyond them each way.
        sizes = np.geomspace(runs["params"].min() / 1.25, runs["params"].max() * 1.25, 80)
        x = np.log10(sizes)
        ax.plot(sizes, optimum["curvature"] * x**2 + optimum["slope"] * x + optimum["intercept"],
                "--", color=colour)
        ax.plot(optimum["params_opt"], optimum["loss_opt"], OPTIMUM_MARKERS[optimum["method"]], color=colour,
                markersize=15 if optimum["method"] == "parabola" else 10, markeredgecolor="black")
    title = "IsoFLOP profiles"
    if (fit.budgets["method"] == "raw_min").any():
        title += " (diamond: best run, no parabola minimum in range)"
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title=title)
    ax.legend(title="budget")
    ax.grid(True, alpha=0.3)
    return finish(fig, path)


def on_log_axis(values) -> np.ndarray:
    """The values a log axis can show; zeros, infinities and NaNs become gaps."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def span_a_decade(ax, axis: str = "y") -> None:
    """Widen a log axis narrower than a decade around its centre. Values that hardly vary (optima
    that do not move with C, a ladder trained at one budget) would otherwise zoom into rounding
    noise and crowd the tick labels."""
    get_limits, set_limits = getattr(ax, f"get_{axis}lim"), getattr(ax, f"set_{axis}lim")
    low, high = get_limits()
    if high / low < 10:
        centre = np.sqrt(low * high)
        set_limits(centre / np.sqrt(10), centre * np.sqrt(10))


def plot_optimal_scaling(fit: IsoFlopFit, parametric: ParametricFit | None = None, *, path=None) -> Figure:
    """N_opt and D_opt against C: IsoFLOP optima with their power laws (Approach 2) and, when
    given, the parametric law's allocation with its bootstrap band (Approach 3)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    flops = fit.budgets["flops"]
    grid = np.geomspace(flops.min() / 3, flops.max() * 3, 100)  # the budgets, and half a decade beyond
    band = parametric.allocation_band(grid) if parametric is not None and len(parametric.bootstrap) else None
    if parametric is not None:
        predicted = dict(zip(["params", "tokens"], parametric.law.optimal_allocation(grid)))
        exponents = {"params": parametric.law.a, "tokens": parametric.law.b}
    panels = [("params", "N_opt", fit.params_law), ("tokens", "D_opt", fit.tokens_law)]
    for ax, (quantity, label, power_law) in zip(axes, panels):
        ax.plot(flops, fit.budgets[f"{quantity}_opt"], "o", markersize=9, label="IsoFLOP optima")
        if power_law is not None:
            ax.plot(grid, power_law(grid), "--", label=f"Approach 2: {label} ∝ C^{power_law.exponent:.3f}")
        if parametric is not None:
            values = on_log_axis(predicted[quantity])
            legend = f"Approach 3: {label} ∝ C^{exponents[quantity]:.3f}"
            if np.isnan(values).all():  # a law with alpha or beta = 0 puts N_opt at 0 and D_opt at infinity
                legend = f"Approach 3: {label} = {predicted[quantity][0]:.3g}, off the log axis"
            ax.plot(grid, values, "-", label=legend)
        if band is not None:
            ax.fill_between(grid, on_log_axis(band[f"{quantity}_low"]), on_log_axis(band[f"{quantity}_high"]),
                            alpha=0.2, label=f"{parametric.confidence:.0%} bootstrap band")
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=label,
               title=f"compute-optimal {quantity}")
        span_a_decade(ax)
        ax.legend()
        ax.grid(True, alpha=0.3)
    return finish(fig, path)


def plot_loss_frontier(fit: ParametricFit, *, path=None) -> Figure:
    """Left: every run's loss against its 6ND compute, under the law's compute-optimal frontier.
    Right: the law's prediction against the observed loss, on the diagonal if the law fits."""
    fig, (frontier_ax, parity_ax) = plt.subplots(1, 2, figsize=(13, 5))
    points = fit.points
    compute = 6 * points["params"] * points["tokens"]
    frontier_ax.plot(compute, points["loss"], "o", alpha=0.7, label="runs")
    grid = np.geomspace(compute.min(), compute.max(), 100)
    params_opt, tokens_opt = (on_log_axis(values) for values in fit.law.optimal_allocation(grid))
    frontier = fit.law.loss(params_opt, tokens_opt)
    legend = "L(N_opt(C), D_opt(C))" if np.isfinite(frontier).any() else "no frontier: N_opt is 0 or infinite"
    frontier_ax.plot(grid, frontier, "-", label=legend)
    frontier_ax.set(xscale="log", xlabel="compute 6ND (FLOPs)", ylabel="loss", title="loss frontier")
    frontier_ax.legend()
    frontier_ax.grid(True, alpha=0.3)

    predicted = fit.law.loss(points["params"], points["tokens"])
    parity_ax.plot(points["loss"], predicted, "o", alpha=0.7, label="runs")
    limits = [min(points["loss"].min(), predicted.min()), max(points["loss"].max(), predicted.max())]
    parity_ax.plot(limits, limits, "k--", label="prediction = observation")
    parity_ax.set(xlabel="observed loss", ylabel="predicted loss", title="parametric fit")
    parity_ax.legend()
    parity_ax.grid(True, alpha=0.3)
    return finish(fig, path)


def plot_miniseries(ladder, metrics=("val_bpb", "core_score"), *, path=None) -> Figure:
    """Each metric of a depth ladder (from `miniseries.depth_ladder`) against N (left) and against
    training compute (right), every point labelled with its depth. A metric the runs did not record
    leaves its row of panels with a note instead of an empty grid."""
    fig, axes = plt.subplots(len(metrics), 2, figsize=(13, 4.5 * len(metrics)), squeeze=False)
    for row, metric in zip(axes, metrics):
        recorded = ladder[ladder[metric].notna()] if metric in ladder.columns else ladder.iloc[:0]
        for ax, (x, xlabel) in zip(row, [("params", "parameters N"), ("compute", "training compute C (FLOPs)")]):
            ax.set(xscale="log", xlabel=xlabel, ylabel=metric, title=f"{metric} against {xlabel.split(' (')[0]}")
            if recorded.empty:
                ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
                continue
            ordered = recorded.sort_values(x, kind="stable")
            ax.plot(ordered[x], ordered[metric], "o-")
            if "depth" in ordered.columns:
                for point in ordered.itertuples():
                    ax.annotate(f"d{point.depth:g}", (getattr(point, x), getattr(point, metric)),
                                textcoords="offset points", xytext=(5, 5))
            span_a_decade(ax, "x")
            ax.grid(True, alpha=0.3)
    return finish(fig, path)
