"""The chain of stages a run descends from, read from the run directories alone.

Each run directory's identity.json names its stage (base, mid, sft, rl) and its parent: null for a
base run, else {run_dir, checkpoint_step}. Runs recorded before stages existed have neither key and
are base runs. Following the parent links from the newest run back to its base run gives the chain,
which everything in the report is drawn from. Nothing here writes.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from llm.train.rundir import RunDir

STAGES = ("base", "mid", "sft", "rl")
CHAT_STAGES = ("mid", "sft", "rl")


class ReportError(ValueError):
    """A directory the report cannot be drawn from; the message names the fix."""


@dataclass
class Stage:
    """What one run directory says about itself."""
    path: Path
    stage: str
    parent: dict | None
    identity: dict
    summary: dict
    metrics: list[dict]
    launches: list[dict]
    evaluation: dict = field(default_factory=dict)  # DIR/eval.json, when the run was evaluated

    @property
    def name(self) -> str:
        """The stage, and its directory's name where that says more."""
        return self.stage if self.path.name == self.stage else f"{self.stage} ({self.path.name})"


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not valid JSON ({error}): {what}") from None


def read_stage(path: Path) -> Stage:
    identity_path = path / "identity.json"
    if not identity_path.is_file():
        raise ReportError(f"{path} has no identity.json: give a run directory written by train.py")
    identity = _read_json(identity_path, "restore the run directory's identity.json")
    stage = identity.get("stage", "base")
    if stage not in STAGES:
        raise ReportError(f"{identity_path} names stage {stage!r}; expected one of {', '.join(STAGES)}")
    run = RunDir(path)
    evaluation = _read_json(path / "eval.json", "re-run python -m llm.evaluate") if (path / "eval.json").is_file() else {}
    return Stage(path, stage, identity.get("parent"), identity, run.read_summary() or {}, run.read_metrics(),
                 run.read_launches(), evaluation)


def stage_chain(path: str | Path) -> list[Stage]:
    """The stages from the base run to `path`, oldest first."""
    chain = [read_stage(Path(path).expanduser().resolve())]
    seen = {chain[0].path}
    while chain[-1].parent is not None:
        child = chain[-1]
        parent = child.parent.get("run_dir") if isinstance(child.parent, dict) else None
        if not parent or not (Path(parent) / "identity.json").is_file():
            raise ReportError(f"{child.path / 'identity.json'} links to parent {parent!r}, which is not a run "
                              "directory: restore the parent run or fix the link's run_dir")
        parent_path = Path(parent).resolve()
        if parent_path in seen:
            raise ReportError(f"{child.path / 'identity.json'} links back to {parent_path}, a run already in its "
                              "chain: fix the parent link")
        seen.add(parent_path)
        chain.append(read_stage(parent_path))
    chain.reverse()
    if chain[0].stage != "base":
        raise ReportError(f"the chain of {path} starts at {chain[0].path}, a {chain[0].stage} run with no parent: "
                          "link it to its parent run")
    return chain
