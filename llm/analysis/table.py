"""Loading sweep results tables (one row per run) into a DataFrame ready for fitting.

Sweeps write `results.csv` or parquet; a study may span several such files, so they are
concatenated with a `source` column naming the file each row came from. Column names are
arguments everywhere so that tables from other projects can be analysed too.
"""

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

FINISHED_STATUS = "done"

READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def read_tables(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate CSV/parquet tables, adding a `source` column with each file's path."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("no results table given; pass at least one CSV or parquet path")
    frames = []
    for path in map(Path, paths):
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise ValueError(f"cannot read {path}: expected a .csv or .parquet file")
        if not path.is_file():
            raise ValueError(f"results table {path} does not exist")
        frames.append(reader(path).assign(source=str(path)))
    return pd.concat(frames, ignore_index=True)


def require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Fail with one line naming the missing columns and the ones available."""
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise ValueError(
            f"results table has no column {', '.join(map(repr, missing))}; "
            f"available: {', '.join(map(str, df.columns))} (choose another with the *-col options)"
        )


def require_positive(points: pd.DataFrame) -> None:
    """Fail if any column of the fitting inputs holds a missing, infinite or non-positive value."""
    bad = ~(np.isfinite(points) & (points > 0))
    for column, count in bad.sum().items():
        if count:
            raise ValueError(
                f"{column} is missing or not positive in {count} runs; log-space fits need positive values"
            )


def keep_finished_runs(
    df: pd.DataFrame, *, loss_col: str = "val_bpb", status_col: str = "status"
) -> pd.DataFrame:
    """Rows usable for fitting: finished runs with a positive, finite loss.

    Unfinished runs (failed, running, preempted, pending) carry a partial or missing loss that
    would bias the fits, so they are dropped with a warning. Tables without a status column
    (external ones) are taken as all finished. Log-space fits need positive losses.
    """
    require_columns(df, [loss_col])
    if status_col in df.columns:
        finished = df[status_col] == FINISHED_STATUS
        if not finished.all():
            counts = df.loc[~finished, status_col].fillna("missing").value_counts()
            summary = ", ".join(f"{count} {status}" for status, count in counts.items())
            warnings.warn(f"ignoring {(~finished).sum()} unfinished runs ({summary})", stacklevel=2)
        df = df[finished]
    loss = pd.to_numeric(df[loss_col], errors="coerce")
    usable = loss.notna() & (loss > 0) & (loss < float("inf"))
    if not usable.all():
        warnings.warn(
            f"dropping {(~usable).sum()} runs whose {loss_col} is missing or not positive",
            stacklevel=2,
        )
    df = df[usable]
    if df.empty:
        raise ValueError(f"no finished runs with a valid {loss_col} in the results table")
    return df.reset_index(drop=True)


def drop_highest_losses(df: pd.DataFrame, *, loss_col: str = "val_bpb", count: int) -> pd.DataFrame:
    """The table without its `count` runs of highest loss.

    A few far-off runs (tiny budgets, diverged models) can pull a fit even through the Huber loss;
    Besiroglu et al. drop the five highest losses of Chinchilla's data this way before fitting.
    """
    if not 0 <= count < len(df):
        raise ValueError(f"cannot drop {count} of {len(df)} runs; drop at least 0 and leave at least one")
    return df.drop(index=df[loss_col].nlargest(count).index).reset_index(drop=True)


def load_table(
    paths: str | Path | Iterable[str | Path],
    *,
    loss_col: str = "val_bpb",
    status_col: str = "status",
    drop_highest: int = 0,
) -> pd.DataFrame:
    """Read one or several tables, keep the finished runs with a valid loss, minus the
    `drop_highest` runs of highest loss."""
    runs = keep_finished_runs(read_tables(paths), loss_col=loss_col, status_col=status_col)
    return drop_highest_losses(runs, loss_col=loss_col, count=drop_highest)
