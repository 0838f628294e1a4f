"""Checkpoints that a killed run can never leave half-written.

    DIR/checkpoints/step_000200/model.pt            weights (rank 0)
    DIR/checkpoints/step_000200/optim_rank{r}.pt    optimizer state, one file per rank (sharded)
    DIR/checkpoints/step_000200/loader_rank{r}.json dataloader position, one per rank
    DIR/checkpoints/step_000200/meta.json           step, loop state, model shape, vocab, world size

Every rank writes into `step_XXXXXX.partial/`; rank 0 renames it once all files are there. A
directory without the suffix is therefore complete, and resuming picks the newest one.
"""

import json
import pickle
import shutil
from pathlib import Path

import torch

from llm.config.derived import ConfigError, ModelShape
from llm.train.rundir import write_atomic
from llm.train.runtime import Runtime

PARTIAL = ".partial"
UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, json.JSONDecodeError)


class CheckpointError(Exception):
    """A checkpoint on disk that cannot be used (torn, corrupt, or of another model); the message says what to do."""


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def completed(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(PARTIAL)
                  and (p / "meta.json").exists())


def latest(root: Path) -> Path | None:
    found = completed(root)
    return found[-1] if found else None


def save(root: Path, step: int, runtime: Runtime, model_state: dict, optimizer_state: dict,
         loader_state: dict, meta: dict, keep: int) -> Path:
    final = _step_dir(root, step)
    if final.exists():  # written before a preemption at this very step: identical by construction
        return final
    staging = final.with_name(final.name + PARTIAL)
    if runtime.is_master:
        shutil.rmtree(staging, ignore_errors=True)  # debris of a run killed while saving
        staging.mkdir(parents=True)
    runtime.barrier()
    torch.save(optimizer_state, staging / f"optim_rank{runtime.rank}.pt")
    write_atomic(staging / f"loader_rank{runtime.rank}.json", json.dumps(loader_state))
    runtime.barrier()
    if runtime.is_master:
        torch.save(model_state, staging / "model.pt")
        write_atomic(staging / "meta.json", json.dumps({**meta, "step": step, "world_size": runtime.world_size},
                                                       indent=2))
        staging.rename(final)
        _prune(root, keep)
    runtime.barrier()
    return final


def save_weights(root: Path, step: int, model_state: dict, meta: dict) -> Path:
    """A weights-only checkpoint (an imported model: usable, not resumable) from a single process.

    Meant for a directory that is published whole afterwards (see llm.data.paths.publish_directory).
    """
    path = _step_dir(root, step)
    path.mkdir(parents=True)
    torch.save(model_state, path / "model.pt")
    write_atomic(path / "meta.json", json.dumps({**meta, "step": step, "world_size": 1}, indent=2))
    return path


def _prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (at least one) so long runs do not fill the disk."""
    for old in completed(root)[:-max(keep, 1)]:
        shutil.rmtree(old)


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "meta.json").read_text())
    except UNREADABLE as error:
        raise CheckpointError(f"{path} is unreadable ({error.__class__.__name__} in meta.json): delete it to use "
                              "the checkpoint before it") from error


def shape_of(meta: dict) -> ModelShape:
    """The model shape a checkpoint's meta.json records (in its plan, by field name)."""
    return ModelShape(**{name: meta["plan"][name] for name in ModelShape.__dataclass_fields__})


def load_weights(path: Path, device: torch.device | str) -> dict:
    """The model state of the checkpoint at `path`, as every rank of every stage loads it."""
    try:
        return torch.load(path / "model.pt", map_location=device, weights_only=True)
    except UNREADABLE as error:
        raise CheckpointError(f"{path} is unreadable ({error.__class__.__name__} in model.pt): delete it to use "
                              "the checkpoint before it") from error


def load(path: Path, runtime: Runtime) -> tuple[dict, dict, dict, dict]:
    """(model_state, optimizer_state, loader_state, meta) for this rank."""
    meta = read_meta(path)
    if meta["world_size"] != runtime.world_size:
        raise ConfigError(f"{path} was written by {meta['world_size']} ranks but this run has "
                          f"{runtime.world_size}: resume with the same number of processes")
    model_state = load_weights(path, runtime.device)
    try:
        optimizer_state = torch.load(path / f"optim_rank{runtime.rank}.pt", map_location=runtime.device)
        loader_state = json.loads((path / f"loader_rank{runtime.rank}.json").read_text())
    except UNREADABLE as error:
        raise CheckpointError(f"{path} is unreadable ({error.__class__.__name__}): delete it to resume from the "
                              "checkpoint before it") from error
    return model_state, optimizer_state, loader_state, meta


def resolve(path: Path) -> Path:
    """A checkpoint directory from a run directory (its newest checkpoint) or a checkpoint itself."""
    path = Path(path)
    if (path / "meta.json").exists() and (path / "model.pt").exists():
        return path
    newest = latest(path / "checkpoints")
    if newest is None:
        raise FileNotFoundError(f"{path} holds no checkpoint: give a run directory that has trained, "
                                "or a checkpoints/step_N directory")
    return newest
