"""Experiment tracking with wandb: offline by default, so runs work with no network and sync later.

Only rank 0 tracks. The wandb run id is derived from the run directory, so a resumed run keeps
appending to the same wandb run instead of starting a new one.
"""

import hashlib
import os
from pathlib import Path
from typing import Mapping

MODES = ("offline", "online", "disabled")


class Tracker:
    def __init__(self, mode: str, project: str, name: str, run_dir: Path, config: Mapping, enabled: bool):
        if mode not in MODES:
            raise ValueError(f"wandb.mode={mode!r} is not one of {', '.join(MODES)}")
        self.run = None
        if not enabled or mode == "disabled":
            return
        # The environment variable, not just init(mode=...), is what stops wandb phoning home at exit.
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb  # imported late: it is slow to import and most processes never need it

        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run_dir),
                              config=dict(config), mode=mode)

    def log(self, metrics: Mapping, step: int) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
