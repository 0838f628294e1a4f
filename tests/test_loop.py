"""The training loop in this process: the recipe's order, exact resume, and the run's own dtype.

Stopping is simulated by a stop signal that fires after a given step (the real signal, sent to a
real process, is tested in test_train.py); everything else is the real loop on the real corpus.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch

from llm.config import compose_run
from llm.config.derived import ConfigError
from llm.train import build, loop
from llm.train import runtime as runtimes
from llm.train.checkpoint import CheckpointError
from llm.train.lineage import adopt_parent
from tests.conftest import TINY_RUN

RUN = [*TINY_RUN, "checkpoint.every=-1"]  # checkpoints only at the last step and at a stop


class StopAfter:
    """A stop signal that arrives during step `step` (the loop asks once per trained step)."""

    def __init__(self, step: int):
        self.step, self.asked = step, 0

    def requested(self, runtime) -> bool:
        self.asked += 1
        return self.asked >= self.step

    def hand_over(self) -> None:
        pass


def train(run_dir: Path, *overrides: str, stop_after: int | None = None, monkeypatch=None) -> dict:
    if stop_after is not None:
        monkeypatch.setattr(loop, "StopSignal", lambda: StopAfter(stop_after))
    summary = loop.train(compose_run([*RUN, *overrides]), run_dir)
    if monkeypatch is not None:
        monkeypatch.undo()
    return summary


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trajectory(run_dir: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_bpb")) for r in metrics(run_dir)]


def final_weights(run_dir: Path) -> dict:
    return torch.load(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.pt")


def assert_same_run(a: Path, b: Path) -> None:
    assert trajectory(a) == trajectory(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_recipe_records_each_step_once_in_order(tmp_path, llm_home, capsys):
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(run, "checkpoint.every=4")
    assert summary["status"] == "done" and summary["step"] == 8
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(9))  # step 0 is its evaluation alone
    assert records[0].keys() == {"step", "val_bpb"} and all("loss" in r for r in records[1:])
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 4, 8]
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_000004", "step_000008"]
    meta = json.loads((run / "checkpoints" / "step_000004" / "meta.json").read_text())
    assert meta["loop"]["step"] == 4 and "pending" not in meta["loop"]  # the state after step 4, all recorded
    # What a CPU user sees: MFU against the measured peak, the peak RSS, the attention backend named.
    out = capsys.readouterr().out
    assert all(r["mfu"] > 0 for r in records[1:]) and "mfu -" not in out
    assert "attention sdpa (FA3 needs a CUDA device)" in out and "MFU against the measured" in out
    assert int(out.split("peak RSS ")[1].split(" MiB")[0]) > 0
    assert not [w for w in caught if "FlashAttention-3" in str(w.message)]


def test_cadences_follow_one_meaning(tmp_path, llm_home):
    run = tmp_path / "run"
    train(run, "eval.every=0", "checkpoint.every=0")
    assert [r["step"] for r in metrics(run) if "val_bpb" in r] == [8]  # 0: only at the last step
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000008"]
    never = tmp_path / "never"
    summary = train(never, "eval.every=-1")
    assert summary["val_bpb"] is None and not any("val_bpb" in r for r in metrics(never))
    assert [p.name for p in (never / "checkpoints").iterdir()] == ["step_000008"]  # the last one is always written


@pytest.fixture(scope="module")
def straight(tmp_path_factory, llm_home):
    """An uninterrupted run per explicit dtype, trained on first use."""
    runs = {}

    def run_of(dtype: str) -> Path:
        if dtype not in runs:
            runs[dtype] = tmp_path_factory.mktemp(f"straight_{dtype}") / "run"
            train(runs[dtype], f"dtype={dtype}")
        return runs[dtype]

    return run_of


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resume_after_a_stop_is_exact(dtype, straight, tmp_path, monkeypatch):
    run = tmp_path / "run"
    stopped = train(run, f"dtype={dtype}", stop_after=3, monkeypatch=monkeypatch)
    assert stopped["status"] == "preempted" and stopped["step"] == 3
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000003"]
    assert train(run, f"dtype={dtype}")["status"] == "done"
    assert_same_run(straight(dtype), run)
    launches = [json.loads(line) for line in (run / "launches.jsonl").read_text().splitlines()]
    assert [(l["start_step"], l["compute_dtype"]) for l in launches] == [(0, dtype), (3, dtype)]


def test_auto_keeps_the_dtype_of_the_first_launch(straight, tmp_path, monkeypatch):
    """The machine's answer changes between launches (as a noisy probe's could): the run does not."""
    run = tmp_path / "run"
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: False)
    train(run, "dtype=auto", stop_after=3, monkeypatch=monkeypatch)  # undoes the patch afterwards
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: True)
    assert train(run, "dtype=auto")["status"] == "done"
    assert json.loads((run / "identity.json").read_text())["compute_dtype"] == "float32"
    assert_same_run(straight("float32"), run)


def test_a_launch_that_cannot_honour_the_runs_dtype_is_refused_untouched(tmp_path, llm_home, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: True)
    train(run, "dtype=auto", stop_after=2, monkeypatch=monkeypatch)
    assert json.loads((run / "identity.json").read_text())["compute_dtype"] == "bfloat16"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: False)
    with pytest.raises(ConfigError, match="computes in bfloat16 .*dtype=bfloat16"):
        train(run, "dtype=auto")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_auto_and_the_dtype_it_resolves_to_train_identically(tmp_path, llm_home):
    resolved = runtimes.start("cpu", "auto", 0).dtype_name
    auto, explicit = tmp_path / "auto", tmp_path / "explicit"
    train(auto, "dtype=auto", "budget.num_iterations=1", "eval.every=-1")
    train(explicit, f"dtype={resolved}", "budget.num_iterations=1", "eval.every=-1")
    assert metrics(auto)[0]["step"] == 1 and metrics(auto)[0]["loss"] == metrics(explicit)[0]["loss"]
    assert_same_run(auto, explicit)


def test_a_corrupt_checkpoint_is_a_checkpoint_error_and_stays_as_it_was(tmp_path, llm_home, monkeypatch):
    run = tmp_path / "run"
    train(run, stop_after=3, monkeypatch=monkeypatch)
    summary = json.loads((run / "summary.json").read_text())
    (run / "checkpoints" / "step_000003" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="step_000003 is unreadable .*delete it"):
        train(run)
    assert (run / "checkpoints" / "step_000003" / "model.pt").read_bytes() == b"not a checkpoint"
    assert json.loads((run / "summary.json").read_text()) == summary | {"status": "failed"}


def test_a_stage_can_start_from_a_parent_checkpoint(tmp_path, llm_home):
    """A later stage builds on its parent's newest weights, and takes the parent's model shape."""
    parent = tmp_path / "parent"
    train(parent, "budget.num_iterations=2", "eval.every=-1")
    cfg = compose_run([*RUN, "stage=sft", f"init_from={parent}", "model=d4", "train.device_batch_size=4",
                       "stage.examples_per_step=4", "budget=iterations", "budget.num_iterations=1",
                       "~stage.mixture.train.gsm_symbolic"])  # its generators come from a wheel in the data home
    found = adopt_parent(cfg)
    assert found.step == 2 and found.stage == "base" and cfg.model.depth == 2
    child = build.build_run(cfg, runtimes.start(cfg.device, cfg.dtype, cfg.seed), parent=found)
    fresh = build.build_run(compose_run(RUN), runtimes.start(cfg.device, cfg.dtype, cfg.seed))
    weights = final_weights(parent)
    assert all(torch.equal(child.model.state_dict()[k], weights[k]) for k in weights)
    assert not torch.equal(fresh.model.state_dict()["lm_head.weight"], weights["lm_head.weight"])
