"""A later stage's parent: the finished run whose newest checkpoint it starts from.

`init_from=DIR` names the parent. Its weights, tokenizer and model shape come with it: the child
takes the parent's `model` section, and must be configured with the parent's `data` (which
defines the tokenizer), so that a mismatch is refused rather than trained through. The child's
identity.json records the parent's directory and checkpoint step, so a relaunch that names
another parent is refused, and the report card can follow the chain back to the base run.
Nothing here imports torch: train.py checks the parent before a dry run.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llm.config.derived import ConfigError
from llm.train.rundir import TOKENIZER_DIR, RunDir


@dataclass(frozen=True)
class Parent:
    run_dir: Path  # absolute
    step: int  # of its newest checkpoint, the one the child starts from
    stage: str
    config: DictConfig  # its resolved config

    def record(self) -> dict:
        """The parent as identity.json records it."""
        return {"run_dir": str(self.run_dir), "checkpoint_step": self.step, "stage": self.stage}


def find_parent(init_from: str) -> Parent:
    """The finished run at `init_from`, or a one-line refusal naming what is wrong with it."""
    path = Path(init_from).expanduser().resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"init_from={init_from}: there is no run directory there (no config.yaml); "
                          "name a run that train.py finished")
    summary = RunDir(path).read_summary() or {}
    if summary.get("status") != "done":
        raise ConfigError(f"init_from={init_from} is not finished (status {summary.get('status', 'unknown')}): "
                          "rerun its own command to finish it, then start this stage")
    if not (path / TOKENIZER_DIR).is_dir():
        raise ConfigError(f"init_from={init_from} has no {TOKENIZER_DIR}/ copy: it was written by an older "
                          "version of train.py; retrain it")
    config = OmegaConf.load(path / "config.yaml")
    return Parent(path, int(summary["step"]), str(config.stage.name) if "stage" in config else "base", config)


def adopt_parent(cfg: DictConfig) -> Parent | None:
    """Give cfg its parent's model shape (in place) after checking that they share a tokenizer."""
    if cfg.init_from is None:
        return None
    parent = find_parent(cfg.init_from)
    if cfg.stage.name == "rl" and parent.stage == "base":
        # A base model never ends a turn or writes `#### N`: every reward would be 0, and so every advantage.
        raise ConfigError(f"init_from={cfg.init_from} is a base run, which has not learnt the chat format that "
                          "stage=rl rewards: start RL from an sft (or mid) run")
    mine, theirs = OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(parent.config.data)
    differing = [key for key in sorted(set(mine) | set(theirs)) if json.dumps(mine.get(key), default=str)
                 != json.dumps(theirs.get(key), default=str)]
    if differing:
        key = differing[0]
        raise ConfigError(f"init_from={cfg.init_from} has another tokenizer (data.{key}={theirs.get(key)!r}, here "
                          f"{mine.get(key)!r}): configure this stage with the parent's data, e.g. the same experiment=")
    for key, value in parent.config.model.items():
        cfg.model[key] = value
    return parent
