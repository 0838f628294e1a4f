"""python -m llm.evaluate as a real process: eval.json, an untouched run directory, and bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from llm.config.derived import ConfigError
from llm.data.tokenizer import Tokenizer
from llm.eval import core
from llm.eval.bundle import load_bundle
from llm.eval.offline import offline_bundle_dir
from llm.eval.sample import sampled_continuations
from llm.eval.report import evaluate as run_evaluation
from llm.train.load import load_model
from tests.conftest import CONF, REPO

QUICK = ["eval=offline", "eval.core_max_per_task=8", "unconditioned_samples=2", "unconditioned_tokens=8",
         "device=cpu"]


def evaluate(*overrides: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "llm.evaluate", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def compose_evaluate(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="evaluate", overrides=list(overrides))


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained_run, llm_home):
    """A copy of the trained run, evaluated once; (run dir, files before, process, empty cwd)."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    cwd = tmp_path_factory.mktemp("cwd")
    result = evaluate(f"run_dir={run}", *QUICK, cwd=cwd, home=llm_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run, before, result, cwd


def test_eval_json_holds_every_measurement(evaluated):
    run, _, result, _ = evaluated
    report = json.loads((run / "eval.json").read_text())
    assert set(report) == {"checkpoint_step", "checkpoint", "bpb", "core", "samples"}
    summary = json.loads((run / "summary.json").read_text())
    assert report["checkpoint_step"] == summary["step"] == 12
    # Same tokens, batches and weights as the run's last evaluation: the same val bpb.
    assert report["bpb"]["val"] == pytest.approx(summary["val_bpb"], rel=1e-5)
    assert 0 < report["bpb"]["train"] < 10

    core_report = report["core"]
    assert core_report["bundle"].endswith("-v1") and core_report["max_per_task"] == 8
    assert list(core_report["tasks"]) == ["next_line", "next_line_choice", "context_choice"]
    baselines = {"next_line": 0, "next_line_choice": 25, "context_choice": 25}
    for label, task in core_report["tasks"].items():
        assert task["accuracy"] * 8 == round(task["accuracy"] * 8)  # a fraction of 8 examples
        assert task["centered"] == pytest.approx(core.centered(task["accuracy"], baselines[label]))
    assert core_report["score"] == pytest.approx(sum(t["centered"] for t in core_report["tasks"].values()) / 3)

    assert len(report["samples"]["conditioned"]) == 7 and len(report["samples"]["unconditioned"]) == 2
    assert report["samples"]["conditioned"][0].startswith("The capital of France is")
    assert "CORE" in result.stdout and "next_line_choice" in result.stdout and "wrote" in result.stdout


def test_run_directory_is_only_read(evaluated):
    run, before, _, cwd = evaluated
    after = snapshot(run)
    assert set(after) - set(before) == {"eval.json"}
    assert {name: after[name] for name in before} == before  # checkpoints, config, metrics: same bytes, same mtimes
    assert list(cwd.iterdir()) == []  # no hydra output directory, no log file


def test_offline_next_lines_start_at_a_token_boundary(evaluated, trained_run, llm_home):
    """Every language-modelling example of the real offline bundle passes the prefix check."""
    tokenizer = Tokenizer.load(trained_run / "tokenizer")
    tasks = {task.label: task for task in load_bundle(offline_bundle_dir(llm_home))}
    examples = tasks["next_line"].examples()
    assert len(examples) == 500
    for item in examples:
        prompts = core.render_language_modeling(item, "\n", [])
        core.continuation_spans("language_modeling", tokenizer, prompts)  # raises on a violation


@pytest.fixture(scope="module")
def mismatched_run(tmp_path_factory, trained_run) -> Path:
    """A run whose config.yaml no longer describes its checkpoint."""
    run = tmp_path_factory.mktemp("mismatched") / "run"
    shutil.copytree(trained_run, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("depth: 2", "depth: 3", 1))
    return run


@pytest.mark.parametrize("case, overrides, message", [
    ("mismatched", [], "has depth 2"),
    ("trained", ["eval.bundle=/nonexistent/bundle"], "is not a directory"),
    (None, [], "run_dir is required"),
])
def test_bad_input_exits_2_with_one_line(case, overrides, message, mismatched_run, trained_run, llm_home, tmp_path):
    run = {"mismatched": mismatched_run, "trained": trained_run}.get(case)
    result = evaluate(*([f"run_dir={run}"] if run else []), *QUICK, *overrides, cwd=tmp_path, home=llm_home)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not any(tmp_path.iterdir())
    assert run is None or not (run / "eval.json").exists()


def test_run_directories_without_a_config_or_a_checkpoint_are_refused(tmp_path, trained_run, llm_home):
    with pytest.raises(ConfigError, match="has no config.yaml"):
        run_evaluation(compose_evaluate(f"run_dir={tmp_path / 'absent'}"))
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(trained_run / "config.yaml", untrained / "config.yaml")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        run_evaluation(compose_evaluate(f"run_dir={untrained}", "device=cpu"))
    assert sorted(p.name for p in untrained.iterdir()) == ["config.yaml"]


def test_unconditioned_samples_follow_the_seed(trained_run):
    model, tokenizer, _ = load_model(trained_run)
    draw = lambda seed, temperature=1.0: sampled_continuations(model, tokenizer, "", 3, 12, temperature, seed)
    first = draw(0)
    assert len(first) == 3 and first == draw(0) and first != draw(1)
    with pytest.raises(ValueError, match="temperature"):
        draw(0, temperature=0)
