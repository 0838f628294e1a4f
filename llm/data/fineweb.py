"""The reference's real pretraining data: FineWeb-Edu 100B, shuffled and re-sharded by karpathy.

The dataset is 1823 parquet shards (about 100 MB each) on Hugging Face; the last one,
shard_01822, is the validation split. Downloading the first N shards plus that last one gives a
directory in the standard layout (training shards sort first, validation last).
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from llm.data.download import download
from llm.data.paths import exclusive_lock

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
LAST_SHARD = 1822  # the validation shard


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def fineweb_dir(base: Path) -> Path:
    return Path(base) / "data" / "fineweb_edu"


def _is_valid_shard(path: Path) -> bool:
    """A complete download opens as parquet and has the text column; a truncated one does not."""
    try:
        return "text" in pq.ParquetFile(path).schema_arrow.names
    except Exception:  # pyarrow raises several types for damaged files; all mean "download again"
        return False


def _download_shard(index: int, directory: Path, base_url: str, backoff_s: float) -> None:
    target = directory / shard_name(index)
    if not target.exists():
        download(f"{base_url}/{shard_name(index)}", target, backoff_s, "fineweb",
                 "check the network and run again (finished shards are kept)", is_valid=_is_valid_shard, timeout_s=30)


def download_fineweb_edu(base: Path, num_train_shards: int, base_url: str = BASE_URL, workers: int = 4,
                         backoff_s: float = 2.0) -> Path:
    """Download the first `num_train_shards` shards (-1: all 1822) and the validation shard.

    Shards already present are skipped. A failed attempt is retried after backoff_s, 2*backoff_s,
    4*backoff_s, ... seconds; each shard is written under a temporary name and renamed once it
    opens as parquet. Returns the dataset directory.
    """
    if num_train_shards == -1:
        num_train_shards = LAST_SHARD
    if not 1 <= num_train_shards <= LAST_SHARD:
        raise ValueError(f"num_train_shards must be between 1 and {LAST_SHARD} (or -1 for all), "
                         f"got {num_train_shards}")
    directory = fineweb_dir(base)
    directory.mkdir(parents=True, exist_ok=True)
    indices = list(range(num_train_shards)) + [LAST_SHARD]
    missing = [index for index in indices if not (directory / shard_name(index)).exists()]
    print(f"fineweb: {len(indices) - len(missing)} of {len(indices)} shards present in {directory}")
    with exclusive_lock(directory / ".download.lock"), ThreadPoolExecutor(workers) as pool:
        # list() re-raises the first failure here instead of losing it inside the pool.
        list(pool.map(lambda index: _download_shard(index, directory, base_url.rstrip("/"), backoff_s), missing))
    return directory
