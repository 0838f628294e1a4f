"""Shared test fixtures: an isolated data home, Hydra composition, and the Slurm cluster plumbing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm.config import CONF_DIR as CONF
from llm.config import compose_run
from llm.config.schema import register

pytest_plugins = ["tests.slurm_fixtures"]

REPO = Path(__file__).resolve().parents[1]
register()  # for tests that compose conf/evaluate.yaml themselves

# Fixtures that start train.py processes: a test that uses one is end to end, hence slow.
END_TO_END_FIXTURES = {"isoflop_cpu_sweep"}


def pytest_collection_modifyitems(items):
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def llm_home(tmp_path_factory) -> Path:
    """One data home per session (corpus, tokenizers); LLM_TEST_HOME reuses one across sessions."""
    home = Path(os.environ.get("LLM_TEST_HOME") or tmp_path_factory.mktemp("llm_home"))
    os.environ["LLM_HOME"] = str(home)
    return home


def compose_config(*overrides: str):
    """The config train.py composes from these overrides."""
    return compose_run(list(overrides))


def stage_mixture(name: str, base: str | None) -> tuple:
    """(train, validation) tasks of conf/stage/mixture/NAME.yaml, as a chat stage builds them."""
    from omegaconf import OmegaConf

    from llm.tasks.registry import build_mixture
    entries = OmegaConf.load(CONF / "stage" / "mixture" / f"{name}.yaml")
    return build_mixture(entries.train, training=True, base=base), build_mixture(entries.val, training=False, base=base)


def optim_config(name: str = "muon_adamw", **values):
    """The optim group as train.py composes it (optim=NAME), with `values` set on top."""
    return compose_run([f"optim={name}", *(f"optim.{key}={value}" for key, value in values.items())]).optim


# The tiny_cpu preset, with what the tests vary on top: a sliding window, gradient accumulation
# (4 rows of 64 per pass, 512 tokens per step), a few steps with evaluations between them, and
# a tokenizer trained on less text.
TINY_RUN = [
    "preset=tiny_cpu", "model=d2", "model.window_pattern=SL", "data.tokenizer_max_chars=3000000",
    "train.device_batch_size=4", "train.total_batch_size=512",
    "budget=iterations", "budget.num_iterations=8",
    "eval.every=4", "eval.tokens=1024", "device=cpu",
]


def run_train(run_dir: Path, *overrides: str, home: Path, check: bool = True, nproc: int = 1,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py as a user would (a real process), in run_dir."""
    launcher = [sys.executable, str(REPO / "train.py")] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(REPO / "train.py")]
    full_env = {**os.environ, "LLM_HOME": str(home), "OMP_NUM_THREADS": "1" if nproc > 1 else "2", **(env or {})}
    result = subprocess.run([*launcher, *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, llm_home) -> Path:
    """A tiny model trained once per session by the training loop, in this process (for evaluation,
    chat, export); train.py itself, as a process, is tested in test_train.py."""
    from llm.config import compose_run
    from llm.train.loop import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(compose_run([*TINY_RUN, "budget.num_iterations=12"]), run)
    return run


def run_sweep(*overrides: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a multirun of train.py as a user would (a real process)."""
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *overrides], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "LLM_HOME": str(home)}, timeout=3600)
    if check and result.returncode != 0:
        raise AssertionError(f"sweep failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def isoflop_cpu_sweep(tmp_path_factory, llm_home) -> Path:
    """The example CPU IsoFLOP sweep, run once per session with the local launcher."""
    root = tmp_path_factory.mktemp("sweeps")
    run_sweep("sweep=isoflop_cpu", f"sweeps_root={root}", "sweep_label=ci", home=llm_home)
    return root / "isoflop_cpu" / "ci"
