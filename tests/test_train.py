"""train.py end to end, as real processes: the run-directory contract, resume, bad input.

The loop's logic is tested in this process by test_loop.py; these tests start train.py (and
torchrun) as a user would, so they are slow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm.device import fast_bf16_matmul
from tests.conftest import REPO, TINY_RUN, run_train

pytestmark = pytest.mark.slow

LONG_RUN = [*TINY_RUN, "budget.num_iterations=40", "eval.every=10", "checkpoint.every=4", "checkpoint.keep=20"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def final_weights(run_dir: Path) -> dict:
    newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return torch.load(newest / "model.pt")


def assert_same_trajectory(a: Path, b: Path) -> None:
    losses = lambda d: [(r["step"], r.get("loss"), r.get("val_bpb")) for r in read_jsonl(d / "metrics.jsonl")]
    assert losses(a) == losses(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_directory_contract(tmp_path, llm_home):
    run = tmp_path / "run"
    result = run_train(run, *TINY_RUN, "checkpoint.every=4", home=llm_home)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["step"] == 8 == summary["num_iterations"]
    assert set(summary["params"]) == {"wte", "value_embeds", "lm_head", "transformer_matrices", "scalars", "total"}
    assert summary["tokens_trained"] == 8 * 512 and summary["total_flops"] == summary["flops_per_token"] * 8 * 512
    assert summary["world_size"] == 1 and summary["train_time_sec"] > 0 and summary["val_bpb"] > 0

    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(9))
    assert all({"loss", "lrm", "tok_per_sec", "mfu"} <= r.keys() for r in records[1:])
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 4, 8]
    assert records[8]["val_bpb"] < records[0]["val_bpb"]  # it learns even in 8 steps
    assert records[8]["lrm"] < records[1]["lrm"] == 1.0  # the warmdown is applied

    identity = json.loads((run / "identity.json").read_text())
    assert len(identity["git_commit"]) >= 7
    assert "depth: 2" in (run / "config.yaml").read_text()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_000004", "step_000008"]
    assert "step 00008/00008" in result.stdout and "eta" in result.stdout
    (launch,) = read_jsonl(run / "launches.jsonl")
    assert launch["start_step"] == 0 and launch["world_size"] == 1
    assert launch["compute_dtype"] == ("bfloat16" if fast_bf16_matmul("cpu") else "float32")  # dtype=auto

    # Running the finished run again trains nothing and changes nothing.
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    again = run_train(run, *TINY_RUN, "checkpoint.every=4", home=llm_home)
    assert "already finished at step 8" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def _start(run_dir: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "LLM_HOME": str(home)}
    return subprocess.Popen([sys.executable, "train.py", *LONG_RUN, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, llm_home) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    run_train(run, *LONG_RUN, home=llm_home)
    return run


def test_resume_after_kill_is_exact(straight_run, tmp_path, llm_home):
    run = tmp_path / "run"
    process = _start(run, llm_home)
    _wait_for(lambda: (run / "checkpoints" / "step_000004").exists())
    process.kill()
    process.wait()
    killed_summary = json.loads((run / "summary.json").read_text())
    assert killed_summary["status"] == "running" and killed_summary["step"] < 40, "the kill came too late"
    run_train(run, *LONG_RUN, home=llm_home)
    assert json.loads((run / "summary.json").read_text())["status"] == "done"
    assert_same_trajectory(straight_run, run)


def test_preemption_signal_checkpoints_and_resume_is_exact(straight_run, tmp_path, llm_home):
    run = tmp_path / "run"
    process = _start(run, llm_home)
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3)
    process.send_signal(signal.SIGUSR2)
    process.wait()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and 0 < summary["step"] < 40
    assert (run / "checkpoints" / f"step_{summary['step']:06d}").exists()  # saved at the signal
    run_train(run, *LONG_RUN, home=llm_home)
    assert_same_trajectory(straight_run, run)


def test_a_directory_of_another_config_is_refused_untouched(straight_run, llm_home):
    before = {p: p.stat().st_mtime_ns for p in straight_run.rglob("*") if p.is_file()}
    result = run_train(straight_run, *LONG_RUN, "model.depth=3", home=llm_home, check=False)
    assert result.returncode == 2
    assert "holds a run of a different config (differs in model)" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in straight_run.rglob("*") if p.is_file()} == before


def test_two_process_gloo_run(tmp_path, llm_home):
    run = tmp_path / "run"
    run_train(run, *TINY_RUN, nproc=2, home=llm_home)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / "step_000008").iterdir()) == [
        "loader_rank0.json", "loader_rank1.json", "meta.json", "model.pt", "optim_rank0.pt", "optim_rank1.pt"]


def test_wandb_offline_run_lands_in_the_run_directory(tmp_path, llm_home):
    run = tmp_path / "run"
    run_train(run, *TINY_RUN, "budget.num_iterations=2", "wandb.mode=offline", home=llm_home)
    assert list((run / "wandb").glob("offline-run-*"))


def test_a_corrupt_checkpoint_is_reported_not_loaded(straight_run, tmp_path, llm_home):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    summary = json.loads((run / "summary.json").read_text()) | {"status": "preempted"}
    (run / "summary.json").write_text(json.dumps(summary))
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    (newest / "model.pt").write_bytes(b"not a checkpoint")
    result = run_train(run, *LONG_RUN, home=llm_home, check=False)
    assert result.returncode == 2 and "is unreadable" in result.stderr and "delete it" in result.stderr
    assert (newest / "model.pt").read_bytes() == b"not a checkpoint"
    # The restart failed while building: its status says so, and the numbers of the last run remain.
    assert json.loads((run / "summary.json").read_text()) == summary | {"status": "failed"}


def test_a_run_that_fails_while_building_says_failed(tmp_path, llm_home):
    run, empty = tmp_path / "run", tmp_path / "empty_corpus"  # a directory passes the config's checks
    empty.mkdir()
    result = run_train(run, *TINY_RUN, "data=parquet", f"data.path={empty}", home=llm_home, check=False)
    assert result.returncode != 0 and "no .parquet shards" in result.stderr
    assert json.loads((run / "summary.json").read_text()) == {"status": "failed"}
    # A directory that is not there is refused before the run directory is touched.
    missing = run_train(tmp_path / "other", *TINY_RUN, "data=parquet", f"data.path={tmp_path / 'no_such_corpus'}",
                        home=llm_home, check=False)
    assert missing.returncode == 2 and "no_such_corpus" in missing.stderr and not any((tmp_path / "other").iterdir())
