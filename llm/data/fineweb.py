"""The reference's real pretraining data: FineWeb-Edu 100B, shuffled and re-sharded by karpathy.

The dataset is 1823 parquet shards (about 100 MB each) on Hugging Face; the last one,
shard_01822, is the validation split. Downloading the first N shards plus that last one gives a
directory in the standard layout (training shards sort first, validation last).
"""

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from llm.data.paths import exclusive_lock

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
LAST_SHARD = 1822  # the validation shard
MAX_ATTEMPTS = 5
CHUNK_BYTES = 1 << 20


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
    if target.exists():
        return
    url = f"{base_url}/{shard_name(index)}"
    partial = target.with_name(target.name + ".partial")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
            if not _is_valid_shard(partial):
                raise OSError("the downloaded file is not a parquet file with a text column")
            partial.replace(target)  # atomic: a shard is either complete or absent
            print(f"fineweb: downloaded {target.name}")
            return
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            partial.unlink(missing_ok=True)
            if attempt == MAX_ATTEMPTS:
                raise OSError(f"could not download {url} after {MAX_ATTEMPTS} attempts ({error}); "
                              "check the network and run again (finished shards are kept)") from error
            wait = backoff_s * 2 ** (attempt - 1)
            print(f"fineweb: attempt {attempt}/{MAX_ATTEMPTS} for {target.name} failed ({error}); "
                  f"retrying in {wait:g}s")
            time.sleep(wait)


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
