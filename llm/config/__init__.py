"""Config schema (one dataclass per group) and the quantities derived from a composed config."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from llm.config.schema import register

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_run(overrides: list[str]) -> DictConfig:
    """The config train.py would run with these overrides, for tools that are not Hydra apps."""
    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))
