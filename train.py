"""Train a language model from a Hydra-composed config.

    python train.py                                   # d20 on the embedded corpus
    python train.py experiment=cpu                    # a tiny model that trains on a laptop CPU
    python train.py model=d12 optim=adamw dry_run=true
    torchrun --nproc_per_node=8 train.py experiment=speedrun hydra.run.dir=runs/speedrun
    python train.py -m sweep=isoflop_cpu              # a sweep (see conf/sweep, conf/hydra/launcher)
    python train.py experiment=cpu stage=mid init_from=runs/cpu hydra.run.dir=runs/cpu_mid   # a later stage
    python train.py experiment=cpu stage=rl init_from=runs/cpu_sft hydra.run.dir=runs/cpu_rl  # RL on a chat model
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from llm.cli import exit_on
from llm.config import composition_complaint, derived
from llm.config.schema import register
from llm.tasks.base import TaskError
from llm.train.lineage import adopt_parent  # torch-free, like everything before training starts

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        adopt_parent(cfg)  # a later stage: the parent must be finished and share the tokenizer
        plan = derived.plan(cfg)  # every check a run makes on its config, before it builds anything
    except (derived.ConfigError, OmegaConfBaseException) as error:  # e.g. a mandatory value left unset
        print(f"error: {composition_complaint(error)}", file=sys.stderr)
        sys.exit(2)
    if cfg.dry_run:
        print(plan.one_line() if HydraConfig.get().mode == RunMode.MULTIRUN else plan.report())
        return
    from llm.train.checkpoint import CheckpointError  # torch is imported only when there is training to do
    from llm.train.loop import train

    with exit_on(derived.ConfigError, CheckpointError, TaskError):
        train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    # Hydra raises what it cannot compose (a bad choice, key or value, a mandatory value left unset)
    # instead of printing its multi-line report, so that it can be given as the one line every
    # other refusal gets.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {composition_complaint(error)}", file=sys.stderr)
        sys.exit(2)
