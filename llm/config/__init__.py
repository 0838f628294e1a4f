"""Config schema (one dataclass per group) and the quantities derived from a composed config.

Importing the package imports neither Hydra nor torch: the model takes its shape from here
(`derived.ModelShape`), and `llm.model` must stay usable without Hydra.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_run(overrides: list[str]):
    """The config train.py would run with these overrides (a DictConfig), for tools that are not Hydra apps."""
    from hydra import compose, initialize_config_dir  # imported here: only composing needs Hydra

    from llm.config.schema import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))


def composition_complaint(error: Exception) -> str:
    """One line for a config Hydra could not compose or a value it could not fill.

    Hydra's own report runs over several lines (the message, then the schema error's key and type);
    the first line of each says what a user needs, followed by the options when it lists them.
    """
    line = str(error).splitlines()[0]
    if error.__cause__ is not None:
        line = f"{line}: {str(error.__cause__).splitlines()[0]}"
    options = [name for name in getattr(error, "options", None) or [] if not name.endswith("_schema")]
    return f"{line} (options: {', '.join(options)})" if options else line
