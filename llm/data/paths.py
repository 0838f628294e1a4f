"""Where data, tokenizers and caches live, and how they get there safely.

Everything this project downloads or builds goes under one base directory, never into the
repository. Several processes (the ranks of one job, or two jobs) may ask for the same artefact at
once, and a build may be killed half-way; `publish_directory` makes both harmless: one process
builds while the others wait on a lock, and the result appears under its final name only when it
is complete.
"""

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def base_dir(configured: str | None = None) -> Path:
    """The root for all data: `configured` if given, else $LLM_HOME, else the user cache dir."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("LLM_HOME"):
        return Path(os.environ["LLM_HOME"]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "llm"


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock on `lock_path`; other processes asking for it wait until released."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def publish_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces nothing and becomes `target` on success.

    Call it while holding the lock for `target`. The staging directory sits next to the target (so
    the final rename stays on one filesystem and is atomic); a stale one from a killed build is
    wiped first, and a failed build leaves no `target` behind.
    """
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
