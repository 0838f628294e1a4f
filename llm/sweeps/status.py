"""A sweep at a glance: where each run is, how it is doing, when it will be done; loss curves."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # status is run from shells without a display
import matplotlib.pyplot as plt  # noqa: E402

from llm.sweeps.collect import collect  # noqa: E402
from llm.train.rundir import RunDir  # noqa: E402


def _cell(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def status_table(sweep_dir: Path) -> str:
    table = collect(sweep_dir)
    header = f"{'run':<28} {'status':<10} {'progress':>16} {'loss':>8} {'val_bpb':>8} {'eta':>8} {'slurm job':>10}"
    lines = [header, "-" * len(header)]
    for row in table.itertuples():
        run_dir = Path(row.run_dir)
        records = RunDir(run_dir).read_metrics()
        trained = [r for r in records if "loss" in r]
        last = trained[-1] if trained else {}
        step, total = row.step, row.num_iterations
        progress = "-" if math.isnan(total) else f"{int(step)}/{int(total)} {100 * step / total:3.0f}%"
        eta = last.get("eta_sec") if row.status == "running" else None
        eta_text = f"{eta / 60:.1f}m" if eta is not None else "-"
        lines.append(f"{run_dir.name:<28} {row.status:<10} {progress:>16} {_cell(last.get('loss'), '.4f'):>8} "
                     f"{_cell(row.val_bpb, '.4f'):>8} {eta_text:>8} {row.slurm_job_id or '-':>10}")
    counts = table.status.value_counts().to_dict()
    lines.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return "\n".join(lines)


def plot_losses(sweep_dir: Path, path: Path) -> Path:
    """Training loss and validation bpb against step, one line per run."""
    figure, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run_dir in collect(sweep_dir).run_dir:
        records = RunDir(run_dir).read_metrics()
        label = Path(run_dir).name
        trained = [r for r in records if "loss" in r]
        if trained:
            train_ax.plot([r["step"] for r in trained], [r["loss"] for r in trained], label=label, linewidth=1)
        evaluated = [r for r in records if "val_bpb" in r]
        if evaluated:
            val_ax.plot([r["step"] for r in evaluated], [r["val_bpb"] for r in evaluated], marker="o", label=label)
    train_ax.set(title="training loss", xlabel="step", ylabel="loss (nats/token)")
    val_ax.set(title="validation", xlabel="step", ylabel="bits per byte")
    train_ax.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
