"""Checks a multirun must pass before any job starts, whichever launcher runs it.

A sweep directory belongs to one grid: re-running the same command with the same label completes
it, but a different grid under the same label would mix two experiments in one results table, so
it is refused. A grid that expands to no jobs is refused too, rather than doing nothing quietly.
"""

import json
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from llm.train.rundir import write_atomic

GRID_FILE = "grid.json"
# Overrides that say where or how to run a grid, not what is in it.
NOT_PART_OF_THE_GRID = ("sweep_label", "sweeps_root", "dry_run", "hydra.", "hydra/")


def expand_grid(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper will expand them."""
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = [o for o in config.hydra.overrides.task if not o.startswith(NOT_PART_OF_THE_GRID)]
    overrides = OverridesParser.create().parse_overrides(params + arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class SweepGuard(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = expand_grid(config)
        if not jobs:
            _refuse("the sweep's grid expands to no jobs: check the values given to the swept keys")
        if config.get("dry_run"):
            return  # a dry run only lists the grid; it claims no directory
        sweep_dir = Path(str(config.hydra.sweep.dir))
        grid_path = sweep_dir / GRID_FILE
        if grid_path.exists():
            recorded = json.loads(grid_path.read_text())
            if sorted(recorded) != sorted(jobs):
                _refuse(f"{sweep_dir} holds a different grid ({len(recorded)} jobs, this one has {len(jobs)}): "
                        "use another sweep_label, or delete that directory to start over")
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(grid_path, json.dumps(jobs, indent=1))
