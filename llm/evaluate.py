"""Evaluate a trained run's newest checkpoint and write DIR/eval.json (see llm/eval/report.py).

    python -m llm.evaluate run_dir=runs/cpu                          # the offline bundle (default)
    python -m llm.evaluate run_dir=runs/d20 eval=core                # the real CORE bundle (downloaded)
    python -m llm.evaluate run_dir=DIR eval.bundle=/data/eval_bundle eval.core_max_per_task=100
    python -m llm.evaluate run_dir=runs/cpu_sft eval=chat                # the chat tasks (ChatCORE offline)
    torchrun --nproc_per_node=8 -m llm.evaluate run_dir=runs/speedrun eval=core

Bad input (no run directory, no or mismatched checkpoint, no bundle directory) and a failed bundle
download print one line and exit 2.
"""

import hydra
from omegaconf import DictConfig

from llm.cli import exit_on
from llm.config.derived import ConfigError
from llm.config.schema import register
from llm.eval.report import evaluate
from llm.tasks.base import TaskError
from llm.train.checkpoint import CheckpointError

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    # Bad input, a missing file or task data, a download that kept failing.
    with exit_on(ConfigError, CheckpointError, TaskError, OSError):
        evaluate(cfg)


if __name__ == "__main__":
    main()
