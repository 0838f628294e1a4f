"""The run directory: the contract between a run and everything that reads it.

    DIR/config.yaml       the resolved config
    DIR/identity.json     the part of the config that defines the trajectory, the stage, the parent
                          run (directory and checkpoint step) of a later stage, the compute dtype
                          the first launch resolved, and the git commit
    DIR/metrics.jsonl     one JSON object per logged step
    DIR/summary.json      status and headline numbers, rewritten atomically as the run goes
    DIR/launches.jsonl    one line per start of the run: host, step it started from, dtype, Slurm job ids
    DIR/tokenizer/        a copy of the run's tokenizer, so the directory is usable without the data home
    DIR/checkpoints/      see checkpoint.py

Sweeps, notebooks and evaluation read only these files. Every write is atomic (temp file, fsync,
rename), so a run killed at any instant leaves each file either old or new, never torn.
"""

import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from llm.config.derived import ConfigError

TOKENIZER_DIR = "tokenizer"

# What a scheduler tells a job about itself, recorded at every (re)start.
SCHEDULER_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                       "SLURM_JOB_PARTITION", "SLURM_NTASKS")

# Config sections that decide which weights a run produces. Changing any of them under an existing
# run directory would silently splice two different runs together, so it is refused.
TRAJECTORY_KEYS = ("stage", "model", "optim", "dataloader", "budget", "data", "seed",
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


@dataclass
class Summary:
    """DIR/summary.json of a run that has started training: its status and headline numbers."""
    status: str  # running, done, preempted (starting and failed only change the status of what is there)
    step: int
    num_iterations: int
    train_loss: float | None
    val_bpb: float | None
    min_val_bpb: float | None
    core_score: float | None
    params: dict
    scaling_params: int
    flops_per_token: int
    tokens_trained: int
    total_flops: float
    train_time_sec: float
    device: str
    world_size: int
    run_name: str
    plan: dict  # Plan.describe()


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.checkpoints = self.path / "checkpoints"

    def check_identity(self, config: Mapping, parent: Mapping | None = None) -> None:
        """Refuse a directory that holds a run of another config or another parent (every rank checks, so
        all fail together)."""
        identity_path = self.path / "identity.json"
        if not identity_path.exists():
            return
        identity = json.loads(identity_path.read_text())
        recorded, current = identity["trajectory"], _trajectory(config)
        recorded_stage = (recorded.get("stage") or {"name": "base"})["name"]
        if recorded_stage != current["stage"]["name"]:
            raise ConfigError(f"{self.path} holds a stage={recorded_stage} run, not stage={current['stage']['name']}: "
                              "choose another hydra.run.dir for this stage")
        recorded_parent = (identity.get("parent") or {}).get("run_dir")
        if recorded_parent != (parent or {}).get("run_dir"):
            raise ConfigError(f"{self.path} continues init_from={recorded_parent}, not {(parent or {}).get('run_dir')}: "
                              "choose another hydra.run.dir, or name the same parent")
        recorded.setdefault("stage", current["stage"])  # a base run recorded before stages existed
        differing = [k for k in TRAJECTORY_KEYS if json.dumps(recorded.get(k), sort_keys=True, default=str)
                     != json.dumps(current[k], sort_keys=True, default=str)]
        if differing:
            raise ConfigError(f"{self.path} holds a run of a different config (differs in {', '.join(differing)}): "
                              "choose another hydra.run.dir, or delete that directory to start over")

    def recorded_dtype(self) -> str | None:
        """The compute dtype the run's first launch resolved (None: a new run, or one recorded before dtypes were)."""
        identity_path = self.path / "identity.json"
        return json.loads(identity_path.read_text()).get("compute_dtype") if identity_path.exists() else None

    def bind(self, config: Mapping, resolved_yaml: str, compute_dtype: str, parent: Mapping | None = None) -> None:
        """Record the config this directory runs (its identity is written once, by the first run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        identity_path = self.path / "identity.json"
        if not identity_path.exists():
            identity = {"trajectory": _trajectory(config), "stage": config["stage"]["name"], "parent": parent,
                        "compute_dtype": compute_dtype, "git_commit": git_commit()}
            write_atomic(identity_path, json.dumps(identity, indent=2, default=str))
        write_atomic(self.path / "config.yaml", resolved_yaml)

    def record_launch(self, start_step: int, world_size: int, compute_dtype: str) -> None:
        """Append who started this run, where it started from and how it computes: one line per (re)start.

        The dtype is the run's own (identity.json); this line says where each stretch of it ran.
        """
        scheduler = {key.lower(): os.environ[key] for key in SCHEDULER_VARIABLES if key in os.environ}
        if "slurm_job_id" in scheduler:  # the id squeue and sacct show: ARRAY_TASK for array jobs
            array = (scheduler.get("slurm_array_job_id"), scheduler.get("slurm_array_task_id"))
            scheduler["slurm_job"] = "_".join(array) if all(array) else scheduler["slurm_job_id"]
        record = {"time": time.time(), "host": socket.gethostname(), "start_step": start_step,
                  "world_size": world_size, "compute_dtype": compute_dtype, **scheduler}
        with open(self.path / "launches.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_launches(self) -> list[dict]:
        path = self.path / "launches.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def read_summary(self) -> dict | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else None

    def write_summary(self, summary: Summary) -> None:
        self._write_summary(asdict(summary))

    def _write_summary(self, summary: Mapping) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=2, default=float))

    def set_status(self, status: str) -> None:
        """Change only the summary's status, keeping the numbers of the last one written (if any)."""
        self._write_summary({**(self.read_summary() or {}), "status": status})

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
        """Forget metrics past `step` (a checkpoint's): the resumed run logs those steps again, identically."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
