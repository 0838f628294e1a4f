"""Sweeps with the local launcher: the grid, idempotent re-runs, the results table and status view."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from llm.config import compose_run, derived
from llm.sweeps.collect import collect
from llm.sweeps.guard import BASIC_SWEEPER, UnexpandableGrid, expand_grid
from tests.conftest import REPO, run_sweep as sweep


def test_isoflop_dry_run_lists_the_real_grid(tmp_path, llm_home):
    result = sweep("sweep=isoflop", "dry_run=true", f"sweeps_root={tmp_path}", home=llm_home)
    plans = [line for line in result.stdout.splitlines() if line.startswith("d")]
    assert len(plans) == 28
    expected = derived.plan(compose_run(["sweep=isoflop", "model.depth=20", "budget.target_flops=1e19"]))
    assert f"{expected.num_iterations:,} iterations" in plans[-1] and plans[-1].startswith("d20 ")
    assert expected.num_iterations == round(1e19 / (expected.flops_per_token * 524288))
    assert not list(tmp_path.rglob("grid.json"))  # a dry run claims nothing


def test_laptop_dry_run_lists_three_budgets_of_six_sizes_a_factor_two_apart(tmp_path, llm_home):
    result = sweep("sweep=isoflop_laptop", "dry_run=true", f"sweeps_root={tmp_path}", home=llm_home)
    plans = [line for line in result.stdout.splitlines() if line.startswith("d")]
    assert len(plans) == 18
    scaling = sorted({int(re.search(r"([\d,]+) scaling", line).group(1).replace(",", "")) for line in plans})
    assert len(scaling) == 6 and max(b / a for a, b in zip(scaling, scaling[1:])) < 2.1
    largest_budget = derived.plan(compose_run(["sweep=isoflop_laptop", "model.depth=1", "model.aspect_ratio=32",
                                               "budget.target_flops=1e12"]))
    assert largest_budget.tokens_per_param > 20 * 4  # the smallest model is far too small there
    assert largest_budget.shape.model_dim == 32 and not list(tmp_path.rglob("grid.json"))


def test_a_grid_of_no_jobs_and_an_unknown_sweep_are_refused(tmp_path, llm_home):
    empty = sweep("sweep=isoflop_cpu", "model.depth=range(3,3)", f"sweeps_root={tmp_path}", home=llm_home,
                  check=False)
    assert empty.returncode == 2 and "expands to no jobs" in empty.stderr
    unknown = sweep("sweep=nosuch", "dry_run=true", home=llm_home, check=False)
    assert unknown.returncode != 0 and "Could not find 'sweep/nosuch'" in unknown.stderr


def test_the_guard_expands_a_basic_sweep_as_a_product_of_each_keys_last_values():
    config = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": {"model.depth": "range(1,3)", "seed": "1,2,3"}},
        "overrides": {"task": ["sweep_label=ci", "seed=7,8", "optim.name=adamw", "hydra.launcher.wait=true"]}}})
    assert expand_grid(config) == [[f"model.depth={d}", f"seed={s}", "optim.name=adamw"] for d in (1, 2) for s in (7, 8)]
    config.hydra.overrides.task.append("optim.final_lr_frac=interval(0,1)")
    with pytest.raises(UnexpandableGrid, match="an interval has no grid"):
        expand_grid(config)


def test_a_sweeper_the_guard_cannot_expand_is_refused_up_front(tmp_path, llm_home):
    result = sweep("sweep=isoflop_cpu", "hydra.sweeper._target_=somewhere.OtherSweeper", f"sweeps_root={tmp_path}",
                   home=llm_home, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the sweep guard expands only the basic sweeper's grids, and hydra.sweeper is "
        "somewhere.OtherSweeper: run the sweep with hydra/sweeper=basic")
    assert not list(tmp_path.rglob("*"))  # nothing claimed, nothing run


def test_sweep_writes_one_complete_row_per_run(isoflop_cpu_sweep):
    result = subprocess.run([sys.executable, "-m", "llm.sweeps", "collect", str(isoflop_cpu_sweep)], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "12 runs" in result.stdout
    table = pd.read_csv(isoflop_cpu_sweep / "results.csv")
    assert table.equals(pd.read_parquet(isoflop_cpu_sweep / "results.parquet").astype(table.dtypes))
    assert sorted(zip(table.flops_budget, table.depth)) == [(c, d) for c in (1e11, 2.15e11, 4.64e11) for d in (1, 2, 3, 4)]
    assert (table.status == "done").all() and table.val_bpb.notna().all() and table.core_score.notna().all()
    for row in table.itertuples():
        plan = derived.plan(compose_run(["sweep=isoflop_cpu", f"model.depth={row.depth}",
                                         f"budget.target_flops={row.flops_budget}"]))
        assert row.params_total == plan.params["total"] and row.params_transformer == plan.params["transformer_matrices"]
        assert row.num_iterations == plan.num_iterations == row.step
        assert row.tokens_trained == plan.total_tokens and row.model_dim == plan.shape.model_dim


def test_rerunning_a_sweep_trains_nothing_again(isoflop_cpu_sweep, llm_home):
    launches = {p: p.read_text() for p in isoflop_cpu_sweep.rglob("launches.jsonl")}
    checkpoints = {p: p.stat().st_mtime_ns for p in isoflop_cpu_sweep.rglob("model.pt")}
    result = sweep("sweep=isoflop_cpu", f"sweeps_root={isoflop_cpu_sweep.parents[1]}", "sweep_label=ci",
                   home=llm_home)
    assert result.stdout.count("already finished") == 12
    assert {p: p.read_text() for p in isoflop_cpu_sweep.rglob("launches.jsonl")} == launches
    assert {p: p.stat().st_mtime_ns for p in isoflop_cpu_sweep.rglob("model.pt")} == checkpoints


def test_a_different_grid_under_the_same_label_is_refused(isoflop_cpu_sweep, llm_home):
    before = {p: p.stat().st_mtime_ns for p in isoflop_cpu_sweep.rglob("*") if p.is_file()}
    result = sweep("sweep=isoflop_cpu", "budget.target_flops=3e10", "model.depth=1,2,3",
                   f"sweeps_root={isoflop_cpu_sweep.parents[1]}", "sweep_label=ci", home=llm_home, check=False)
    assert result.returncode == 2 and "holds a different grid" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in isoflop_cpu_sweep.rglob("*") if p.is_file()} == before


def test_collect_reports_failed_running_and_pending_runs(isoflop_cpu_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(isoflop_cpu_sweep, copy)
    runs = sorted(p.parent for p in copy.rglob("summary.json"))
    failed = json.loads((runs[0] / "summary.json").read_text()) | {"status": "failed"}
    (runs[0] / "summary.json").write_text(json.dumps(failed))
    (runs[1] / "summary.json").unlink()  # killed before its first summary (a run older than "starting")
    (runs[4] / "summary.json").write_text(json.dumps({"status": "starting"}))  # building its data and model
    (runs[5] / "summary.json").write_text(json.dumps({"status": "failed"}))  # crashed doing so
    (runs[2] / "summary.json").write_text("{\"status\": \"running\", ")  # torn by hand: still a row
    with open(copy / "submissions.jsonl", "a") as f:
        f.write(json.dumps({"run_dir": str(copy / "C1e+10_d9"), "slurm_job_id": "77"}) + "\n")
    statuses = dict(zip(collect(copy).run_dir.map(lambda d: Path(d).name), collect(copy).status))
    assert statuses[runs[0].name] == "failed" and statuses[runs[1].name] == "failed"
    assert statuses[runs[2].name] == "unreadable" and statuses[runs[3].name] == "done"
    assert statuses[runs[4].name] == "starting" and statuses[runs[5].name] == "failed"
    assert statuses["C1e+10_d9"] == "pending"


def test_status_prints_progress_and_plots_loss_curves(isoflop_cpu_sweep, tmp_path):
    image = tmp_path / "losses.png"
    result = subprocess.run([sys.executable, "-m", "llm.sweeps", "status", str(isoflop_cpu_sweep), "--plot", str(image)],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert "12 done" in result.stdout and "100%" in result.stdout
    assert image.stat().st_size > 10_000 and image.read_bytes()[:4] == b"\x89PNG"
    missing = subprocess.run([sys.executable, "-m", "llm.sweeps", "status", str(tmp_path / "nope")], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
