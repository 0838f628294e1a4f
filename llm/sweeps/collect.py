"""Turn a sweep directory into a results table: one row per run, whatever state it is in.

A run is any directory under the sweep that a job has started (it holds identity.json); a job the
launcher submitted that has not started yet shows up as `pending`. Every row is read from the run
directory contract (summary.json, config.yaml, launches.jsonl), so a failed or half-written run
gives a row with its status instead of breaking the table.
"""

import json
import math
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from llm.train.rundir import RunDir

RESULTS = "results"  # results.csv and results.parquet in the sweep directory
PARAM_COLUMNS = {"wte": "params_wte", "value_embeds": "params_value_embeds", "lm_head": "params_lm_head",
                 "transformer_matrices": "params_transformer", "scalars": "params_scalars", "total": "params_total"}
COLUMNS = ["flops_budget", "depth", "model_dim", *PARAM_COLUMNS.values(), "flops_per_token", "num_iterations",
           "step", "tokens_trained", "val_bpb", "core_score", "train_time_sec", "status", "slurm_job_id", "run_dir"]


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.rglob("identity.json"))


def pending_dirs(sweep_dir: Path, started: list[Path]) -> list[Path]:
    """Run directories the launcher recorded as submitted whose job has not started yet."""
    submissions = sweep_dir / "submissions.jsonl"
    if not submissions.exists():
        return []
    recorded = {Path(json.loads(line)["run_dir"]) for line in submissions.read_text().splitlines() if line}
    started_resolved = {p.resolve() for p in started}
    return sorted(p for p in recorded if p.resolve() not in started_resolved)


def run_row(run_dir: Path) -> dict:
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(run_dir=str(run_dir), status="pending", slurm_job_id=None)
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        config = OmegaConf.load(config_path)
        budget = config.budget.get("target_flops", -1)  # only a FLOPs budget has one
        row["flops_budget"] = budget if budget > 0 else math.nan
        row["depth"] = config.model.depth
    run = RunDir(run_dir)
    launches = run.read_launches()
    row["slurm_job_id"] = launches[-1].get("slurm_job") if launches else None
    try:
        summary = run.read_summary()
    except json.JSONDecodeError:  # never written by a run (its writes are atomic), but never fatal here
        row["status"] = "unreadable"
        return row
    if summary is None:
        row["status"] = "failed" if config_path.exists() else "pending"  # started, never got to training
        return row
    if "params" not in summary:  # starting, or failed while building its data and model
        row["status"] = summary.get("status", "unreadable")
        return row
    row.update({column: summary["params"][key] for key, column in PARAM_COLUMNS.items()})
    row.update({key: summary.get(key) for key in ("flops_per_token", "num_iterations", "step", "tokens_trained",
                                                  "val_bpb", "core_score", "train_time_sec", "status")})
    row["model_dim"] = summary["plan"]["model_dim"]
    row["depth"] = summary["plan"]["depth"]
    return row


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory: give the sweep's directory, "
                                "e.g. sweeps/isoflop_cpu/<label>")
    started = run_dirs(sweep_dir)
    rows = [run_row(d) for d in started] + [run_row(d) for d in pending_dirs(sweep_dir, started)]
    if not rows:
        raise FileNotFoundError(f"{sweep_dir} holds no runs: has the sweep been launched?")
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["flops_budget", "depth"], na_position="last", kind="stable").reset_index(drop=True)


def write_results(table: pd.DataFrame, sweep_dir: Path) -> tuple[Path, Path]:
    """results.csv and results.parquet, each written to a temp name and renamed into place."""
    csv, parquet = sweep_dir / f"{RESULTS}.csv", sweep_dir / f"{RESULTS}.parquet"
    for path, write in ((csv, lambda p: table.to_csv(p, index=False)), (parquet, lambda p: table.to_parquet(p))):
        tmp = path.with_name(f".{path.name}.tmp")
        write(tmp)
        tmp.replace(path)
    return csv, parquet
