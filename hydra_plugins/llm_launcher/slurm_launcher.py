"""A Slurm launcher for sweeps that submits and returns.

Hydra's submitit launcher blocks until every job has ended, which holds a login shell hostage for
as long as the sweep runs. This one submits the sweep as one job array, writes what it submitted
into the sweep directory, prints it and returns (`hydra.launcher.wait=true` waits, as tests do).
Runs whose directory already says `done` are not submitted again, so re-running a sweep command
completes a half-failed sweep (llm.sweeps.guard has already checked that it is the same grid).
The jobs themselves run through submitit exactly as with Hydra's launcher, so preemption (USR2)
checkpoints the run and requeues the job, which then resumes.

Hydra only instantiates launchers from the `hydra_plugins` package, hence this module's home.
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from llm.train.rundir import RunDir

log = logging.getLogger(__name__)

SUBMISSIONS_FILE = "submissions.jsonl"


class NodeCall(NamedTuple):
    """The arguments of the launcher's __call__, which submitit runs on the node for one job."""

    sweep_overrides: list[str]
    job_dir_key: str
    job_num: int
    job_id: str
    singleton_state: dict


class PlannedJob(NamedTuple):
    """A job to submit: its call on the node, and the run directory it will write."""

    call: NodeCall
    run_dir: Path


@dataclass
class SweepSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.llm_launcher.slurm_launcher.SweepSlurmLauncher"
    wait: bool = False  # block until every job has ended (and fail if one failed)


ConfigStore.instance().store(group="hydra/launcher", name="llm_slurm_schema", node=SweepSlurmConf,
                             provider="llm")


class SweepSlurmLauncher(SlurmLauncher):
    def __init__(self, wait: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.wait = wait

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)

        started = time.perf_counter()
        jobs, skipped = [], []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            run_dir = self._run_dir(overrides)
            summary = RunDir(run_dir).read_summary()
            if summary is not None and summary.get("status") == "done":
                skipped.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                         _return_value=None, working_dir=str(run_dir)))
                continue
            call = NodeCall(list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
            jobs.append(PlannedJob(call, run_dir))

        submitted = []
        if jobs:
            # map_array takes one sequence per argument of the call.
            submitted = self._executor().map_array(self, *zip(*(job.call for job in jobs)))
        elapsed = time.perf_counter() - started
        _record(sweep_dir, jobs, submitted)
        print(f"submitted {len(submitted)} jobs to Slurm ({len(skipped)} already done, skipped) in "
              f"{elapsed:.2f} s ({elapsed / max(len(job_overrides), 1):.3f} s per job); sweep: {sweep_dir}")
        for handle, job in zip(submitted, jobs):
            print(f"  {handle.job_id:>12}  {job.run_dir.relative_to(sweep_dir)}  "
                  f"{' '.join(filter_overrides(job.call.sweep_overrides))}")
        if not self.wait:
            print(f"watch it with: python -m llm.sweeps status {sweep_dir}")
            queued = [JobReturn(overrides=job.call.sweep_overrides, status=JobStatus.COMPLETED,
                                _return_value=handle.job_id, working_dir=str(job.run_dir))
                      for job, handle in zip(jobs, submitted)]
            return skipped + queued
        return skipped + [handle.results()[0] for handle in submitted]

    def _run_dir(self, overrides: Sequence[str]) -> Path:
        """Where a job will write, composed here exactly as the job will compose it."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return Path(str(cfg.hydra.sweep.dir)).resolve() / str(cfg.hydra.sweep.subdir)

    def _executor(self):
        """A submitit executor with this config's sbatch parameters (as Hydra's launcher builds it)."""
        import submitit

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder"), "slurm_max_num_timeout": params.pop("max_num_timeout")}
        executor = submitit.AutoExecutor(cluster="slurm", **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor


def _record(sweep_dir: Path, jobs: list[PlannedJob], submitted: list) -> None:
    with open(sweep_dir / SUBMISSIONS_FILE, "a") as f:
        for job, handle in zip(jobs, submitted):
            f.write(json.dumps({"time": time.time(), "job_num": job.call.job_num, "slurm_job_id": handle.job_id,
                                "run_dir": str(job.run_dir), "overrides": job.call.sweep_overrides}) + "\n")
