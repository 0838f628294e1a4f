"""Checks a multirun must pass before any job starts, whichever launcher runs it.

A sweep directory belongs to one grid: re-running the same command with the same label completes
it, but a different grid under the same label would mix two experiments in one results table, so
it is refused. A grid that expands to no jobs is refused too, rather than doing nothing quietly.

The guard expands a grid the way Hydra's basic sweeper (the default, hydra/sweeper=basic) does;
the grid of any other sweeper is its own business, so a multirun under one is refused up front
rather than checked against a grid that is not the one it will run.
"""

import itertools
import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from llm.train.rundir import write_atomic

GRID_FILE = "grid.json"
# Overrides that say where or how to run a grid, not what is in it.
NOT_PART_OF_THE_GRID = ("sweep_label", "sweeps_root", "dry_run", "hydra.", "hydra/")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class UnexpandableGrid(ValueError):
    """The grid is not one the guard can expand; the message says what to do instead."""


def expand_grid(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, as the basic sweeper runs them: the cartesian product of every key's
    values, keys in order of first mention (the sweeper's `params`, then the command line), a key
    mentioned again taking its last values."""
    sweeper = config.hydra.sweeper.get("_target_")
    if sweeper != BASIC_SWEEPER:
        raise UnexpandableGrid(f"the sweep guard expands only the basic sweeper's grids, and hydra.sweeper is "
                               f"{sweeper}: run the sweep with hydra/sweeper=basic")
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = [o for o in config.hydra.overrides.task if not o.startswith(NOT_PART_OF_THE_GRID)]
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(params + arguments):
        if override.is_interval_sweep():
            raise UnexpandableGrid(f"{override.input_line}: an interval has no grid to run; "
                                   "give the values as a list or a range()")
        values = (override.sweep_string_iterator() if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        key = override.get_key_element()
        choices[key] = [f"{key}={value}" for value in values]
    return [list(job) for job in itertools.product(*choices.values())]


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class SweepGuard(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            jobs = expand_grid(config)
        except UnexpandableGrid as error:
            _refuse(str(error))
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
