"""The report's figures: one PNG of curves per stage, one panel per numeric metric the stage logged.

No metric is hard-coded: whatever numeric keys a stage's metrics.jsonl holds (loss, val_bpb,
chat/<task>, reward, pass@k, ...) become panels, so a new stage's metrics appear without a change here.
"""

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are rendered from shells and batch jobs without a display
import matplotlib.pyplot as plt  # noqa: E402

# Logged but not worth a panel: the x axis itself, and the time left.
NOT_PLOTTED = {"step", "eta_sec"}


def numeric_series(metrics: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} of every numeric key, in first-seen order, skipping non-finite values."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in metrics:
        for key, value in record.items():
            if key in NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(value)
    return series


def save_atomic(figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def curves(metrics: list[dict], title: str, path: Path) -> bool:
    """Write the stage's curves to `path`; False (nothing written) when it logged no numeric metric."""
    series = numeric_series(metrics)
    if not series:
        return False
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, series.items()):
        # Evaluations are sparse: markers keep a handful of points readable as points.
        ax.plot(steps, values, marker="o" if len(values) <= 20 else None, markersize=3, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    save_atomic(figure, path)
    return True


def chat_bars(columns: dict[str, dict[str, float]], path: Path) -> None:
    """Grouped bars of each chat task's accuracy, one colour per stage ({stage: {task: accuracy}})."""
    tasks = list(dict.fromkeys(task for accuracies in columns.values() for task in accuracies))
    width = 0.8 / len(columns)
    figure, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(tasks) * len(columns) ** 0.5), 3.2))
    for i, (stage, accuracies) in enumerate(columns.items()):
        positions = [t + (i - (len(columns) - 1) / 2) * width for t in range(len(tasks))]
        ax.bar(positions, [accuracies.get(task, 0.0) for task in tasks], width, label=stage)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("chat tasks by stage", fontsize=11)
    figure.tight_layout()
    save_atomic(figure, path)
