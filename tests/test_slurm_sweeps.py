"""Sweeps on the real single-node Slurm cluster (tests/slurm/cluster.sh), through submitit."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, TINY_RUN, run_train

pytestmark = pytest.mark.slurm

# Both sides of every comparison run single-threaded: thread count changes float summation order.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LONG = [*TINY_RUN, "budget.num_iterations=300", "eval.every=0", "checkpoint.keep=3"]


def slurm_sweep(root: Path, label: str, *overrides: str, home: Path, wait: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_HOME": str(home), **ONE_THREAD}
    command = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", f"hydra.launcher.wait={str(wait).lower()}",
               "hydra.launcher.timeout_min=30", "hydra.launcher.cpus_per_task=1", f"sweeps_root={root}",
               f"sweep_label={label}", *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def job_ids(sweep_dir: Path) -> list[str]:
    return [json.loads(line)["slurm_job_id"] for line in (sweep_dir / "submissions.jsonl").read_text().splitlines()]


def launches(run_dir: Path) -> list[dict]:
    path = run_dir / "launches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def final_weights(run_dir: Path) -> dict:
    return torch.load(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.pt")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-j", job_id, "-n", "-X", "-o", "State"], capture_output=True, text=True)
    return out.stdout.split()[0] if out.stdout.split() else ""


@pytest.fixture(scope="session")
def isoflop_cpu_on_slurm(tmp_path_factory, llm_home) -> Path:
    """The whole isoflop_cpu grid, run on Slurm once per session (the notebooks read it too)."""
    root = tmp_path_factory.mktemp("slurm_sweeps")
    slurm_sweep(root, "ci", "sweep=isoflop_cpu", home=llm_home)
    return root / "isoflop_cpu" / "ci"


def test_isoflop_cpu_sweep_runs_every_job_under_slurm(isoflop_cpu_on_slurm):
    sweep_dir = isoflop_cpu_on_slurm
    ids = job_ids(sweep_dir)
    assert len(ids) == 12
    # Accounting records a job's end a moment after submitit has seen its result.
    wait_for(lambda: all(sacct_state(i) == "COMPLETED" for i in ids), 60, "sacct to report every job COMPLETED")
    runs = sorted(p.parent for p in sweep_dir.rglob("identity.json"))
    assert len(runs) == 12
    for run in runs:
        (launch,) = launches(run)
        assert launch["slurm_job"] in ids and launch["start_step"] == 0
    subprocess.run([sys.executable, "-m", "llm.sweeps", "collect", str(sweep_dir)], cwd=REPO, check=True,
                   capture_output=True)
    table = pd.read_csv(sweep_dir / "results.csv")
    assert len(table) == 12 and (table.status == "done").all()
    assert table[["val_bpb", "core_score", "params_total", "tokens_trained"]].notna().all().all()
    assert sorted(set(table.flops_budget)) == [1e11, 2.15e11, 4.64e11] and sorted(set(table.depth)) == [1, 2, 3, 4]
    assert set(table.slurm_job_id.astype(str)) == set(ids)


def test_rerunning_the_sweep_submits_nothing_finished(isoflop_cpu_on_slurm, llm_home):
    before = {p: p.read_text() for p in isoflop_cpu_on_slurm.rglob("launches.jsonl")}
    result = slurm_sweep(isoflop_cpu_on_slurm.parents[1], "ci", "sweep=isoflop_cpu", home=llm_home)
    assert "submitted 0 jobs to Slurm (12 already done" in result.stdout
    assert {p: p.read_text() for p in isoflop_cpu_on_slurm.rglob("launches.jsonl")} == before


def test_two_task_job_trains_data_parallel_like_one_process(tmp_path, llm_home):
    config = [*TINY_RUN, "dataloader.shard_by=rows", "train.device_batch_size=4", "train.total_batch_size=512"]
    slurm_sweep(tmp_path, "ddp", *config, "hydra.launcher.tasks_per_node=2", "hydra.sweep.subdir=run",
                home=llm_home)
    distributed = tmp_path / "adhoc" / "ddp" / "run"
    assert json.loads((distributed / "summary.json").read_text())["world_size"] == 2
    assert launches(distributed)[0]["slurm_ntasks"] == "2"
    single = tmp_path / "single"
    run_train(single, *config, home=llm_home, env=ONE_THREAD)  # one rank, 2 accumulation steps
    loss = lambda d: [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert loss(distributed) == pytest.approx(loss(single), rel=1e-4)
    a, b = final_weights(distributed), final_weights(single)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, llm_home) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    run_train(run, *LONG, "checkpoint.every=10", home=llm_home, env=ONE_THREAD)
    return run


def _submit_and_interrupt(tmp_path: Path, home: Path, interrupt, *extra: str) -> Path:
    slurm_sweep(tmp_path, "interrupted", *LONG, *extra, "hydra.sweep.subdir=run", home=home, wait=False)
    sweep_dir = tmp_path / "adhoc" / "interrupted"
    run_dir = sweep_dir / "run"
    (job_id,) = job_ids(sweep_dir)
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 12, 240, "training to start")
    interrupt(job_id)
    wait_for(lambda: len(launches(run_dir)) == 2 and (run_dir / "summary.json").exists()
             and json.loads((run_dir / "summary.json").read_text())["status"] == "done", 300, "the requeued job")
    return run_dir


def test_requeued_job_resumes_from_its_checkpoint(straight, tmp_path, llm_home):
    run_dir = _submit_and_interrupt(tmp_path, llm_home,
                                    lambda job: subprocess.run(["scontrol", "requeue", job], check=True),
                                    "checkpoint.every=10")
    first, second = launches(run_dir)
    assert second["slurm_restart_count"] == "1" and 0 < second["start_step"] < 300
    a, b = final_weights(run_dir), final_weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_preempted_job_checkpoints_at_the_signal_and_resumes(straight, tmp_path, llm_home):
    # No periodic checkpoints: a resume from step > 0 can only come from the one written at the signal.
    run_dir = _submit_and_interrupt(tmp_path, llm_home,
                                    lambda job: subprocess.run(["scancel", "--signal=USR2", job], check=True),
                                    "checkpoint.every=0")
    first, second = launches(run_dir)
    assert 0 < second["start_step"] < 300
    a, b = final_weights(run_dir), final_weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)
