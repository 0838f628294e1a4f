"""Smoke tests of the single-node Slurm cluster, driven through submitit as sweeps are."""

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError

pytestmark = pytest.mark.slurm

# Jobs unpickle the functions below. Shipped by value, they do not need to
# import this module, which only works when pytest was started from the repo root.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _executor(folder: Path, **params) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # Over 10 minutes, so submitit reads a USR2 as preemption rather than time-out.
    executor.update_parameters(**{"timeout_min": 15, "cpus_per_task": 1, **params})
    return executor


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def _wait_for_job(job: submitit.Job, timeout_s: float = 60) -> None:
    try:
        _wait_until(lambda: job.done(force_check=True), timeout_s, f"job {job.job_id}")
    except pytest.fail.Exception:
        job.cancel(check=False)  # never leave a job holding the only node
        raise


def _accounted_state(job_id: str) -> str:
    """The job's final state in accounting, which slurmctld reports a moment late."""
    def state() -> str:
        out = subprocess.run(
            ["sacct", "-j", job_id, "-n", "-X", "-o", "State"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    _wait_until(lambda: state() not in ("", "PENDING", "RUNNING", "REQUEUED"), 20, f"sacct for job {job_id}")
    return state()


def _square(x: int) -> tuple[int, str]:
    return x * x, os.environ["SLURM_JOB_ID"]


def _rank() -> tuple[int, int]:
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks


class _Counter(submitit.helpers.Checkpointable):
    """Counts to `steps`, logging each start and step; a restart resumes from the log."""

    def __call__(self, log: str, steps: int) -> int:
        path = Path(log)
        with path.open("a") as f:
            f.write(f"start {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        done = sum(line.startswith("step") for line in path.read_text().splitlines())
        for step in range(done + 1, steps + 1):
            time.sleep(0.5)
            with path.open("a") as f:  # one short append per step: a signal cannot tear the log
                f.write(f"step {step}\n")
        return steps


def test_function_runs_and_is_accounted(tmp_path):
    job = _executor(tmp_path).submit(_square, 7)
    _wait_for_job(job)
    assert job.result() == (49, job.job_id)
    assert _accounted_state(job.job_id) == "COMPLETED"


def test_two_tasks_see_their_ranks(tmp_path):
    job = _executor(tmp_path, nodes=1, tasks_per_node=2).submit(_rank)
    _wait_for_job(job)
    assert sorted(job.results()) == [(0, 2), (1, 2)]


def test_preempted_checkpointable_job_is_requeued_and_resumes(tmp_path):
    log = tmp_path / "counter.log"
    steps = 10
    job = _executor(tmp_path / "jobs").submit(_Counter(), str(log), steps)

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    # Preempt mid-run, once submitit's signal handler is surely installed.
    _wait_until(lambda: "step 3" in lines(), 30, "the first run to make progress")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    _wait_for_job(job, timeout_s=60)

    assert job.result() == steps
    log_lines = lines()
    starts = [line for line in log_lines if line.startswith("start")]
    assert starts == ["start 0", "start 1"], log_lines
    assert [line for line in log_lines if line.startswith("step")] == [f"step {i}" for i in range(1, steps + 1)]
    assert log_lines.index("start 1") > log_lines.index("step 3"), "second run did not resume"
    assert _accounted_state(job.job_id) == "COMPLETED"


def test_impossible_request_fails_at_submission(tmp_path):
    executor = _executor(tmp_path, cpus_per_task=64)
    with pytest.raises(FailedJobError, match="Batch job submission failed"):
        executor.submit(_square, 1)
