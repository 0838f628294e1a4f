"""The run directory: the contract between a run and everything that reads it.

    DIR/config.yaml       the resolved config
    DIR/identity.json     the part of the config that defines the trajectory, and the git commit
    DIR/metrics.jsonl     one JSON object per logged step
    DIR/summary.json      status and headline numbers, rewritten atomically as the run goes
    DIR/launches.jsonl    one line per start of the run: host, step it started from, dtype, Slurm job ids
    DIR/checkpoints/      see checkpoint.py

Sweeps, notebooks and evaluation read only these files. Every write is atomic (temp file, fsync,
rename), so a run killed at any instant leaves each file either old or new, never torn.
"""

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from llm.config.derived import ConfigError

# What a scheduler tells a job about itself, recorded at every (re)start.
SCHEDULER_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                       "SLURM_JOB_PARTITION", "SLURM_NTASKS")

# Config sections that decide which weights a run produces. Changing any of them under an existing
# run directory would silently splice two different runs together, so it is refused.
TRAJECTORY_KEYS = ("model", "optim", "dataloader", "budget", "data", "seed",
                   "train.total_batch_size", "train.device_batch_size")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_commit() -> str:
    """The commit of the code that ran, with '-dirty' when the tree had uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _trajectory(config: Mapping) -> dict[str, Any]:
    def select(dotted: str) -> Any:
        node = config
        for part in dotted.split("."):
            node = node[part]
        return node

    return {key: select(key) for key in TRAJECTORY_KEYS}


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.checkpoints = self.path / "checkpoints"

    def check_identity(self, config: Mapping) -> None:
        """Refuse a directory that holds a run of another config (every rank checks, so all fail together)."""
        identity_path = self.path / "identity.json"
        if not identity_path.exists():
            return
        recorded = json.loads(identity_path.read_text())["trajectory"]
        current = _trajectory(config)
        differing = [k for k in TRAJECTORY_KEYS if json.dumps(recorded.get(k), sort_keys=True, default=str)
                     != json.dumps(current[k], sort_keys=True, default=str)]
        if differing:
            raise ConfigError(f"{self.path} holds a run of a different config (differs in {', '.join(differing)}): "
                              "choose another hydra.run.dir, or delete that directory to start over")

    def bind(self, config: Mapping, resolved_yaml: str) -> None:
        """Record the config this directory runs (its identity is written once, by the first run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        identity_path = self.path / "identity.json"
        if not identity_path.exists():
            write_atomic(identity_path, json.dumps({"trajectory": _trajectory(config), "git_commit": git_commit()},
                                                   indent=2, default=str))
        write_atomic(self.path / "config.yaml", resolved_yaml)

    def record_launch(self, start_step: int, world_size: int, compute_dtype: str) -> None:
        """Append who started this run, where it started from and how it computes: one line per (re)start.

        dtype=auto is decided on each machine, so a run resumed on another node kind says so here.
        """
        scheduler = {key.lower(): os.environ[key] for key in SCHEDULER_VARIABLES if key in os.environ}
        if "slurm_job_id" in scheduler:  # the id squeue and sacct show: ARRAY_TASK for array jobs
            array = (scheduler.get("slurm_array_job_id"), scheduler.get("slurm_array_task_id"))
            scheduler["slurm_job"] = "_".join(array) if all(array) else scheduler["slurm_job_id"]
        record = {"time": time.time(), "host": socket.gethostname(), "start_step": start_step,
                  "world_size": world_size, "compute_dtype": compute_dtype, **scheduler}
        with open(self.path / "launches.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_summary(self) -> dict | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else None

    def write_summary(self, summary: Mapping) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=2, default=float))

    def set_status(self, status: str) -> None:
        """Change only the summary's status, keeping the numbers of the last one written (if any)."""
        self.write_summary({**(self.read_summary() or {}), "status": status})

    def append_metrics(self, record: Mapping) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        # A kill mid-append can leave a partial last line: it is dropped, never parsed as garbage.
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines()
                if line.endswith("}")]

    def rewind_metrics(self, step: int) -> None:
        """Forget metrics past a checkpoint step: the resumed run logs those steps again, identically."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
