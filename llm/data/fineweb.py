"""The reference's real pretraining data: FineWeb-Edu 100B, shuffled and re-sharded by karpathy.

The dataset is 1823 parquet shards (about 100 MB each) on Hugging Face, shard_00000 ... shard_01822.
A run downloads the first N as training shards, and one more to validate on (`data.val_shard`):

  dataset_last      shard_01822, the dataset's last shard, whatever N is (this project's default).
                    Every run, whatever it downloaded, is measured on the same text, so the
                    validation losses of a sweep's runs and of separate runs compare directly.
  downloaded_last   shard_N, the one after the training shards. The reference validates on the
                    last shard present in its data directory, so `-n 370` trains on 369 shards
                    and validates on shard_00369; this option reproduces that split.

Either way the returned directory is in the standard layout: training shards sort first and the
validation shard last. For downloaded_last it is a directory of links into the shared downloads,
so that shards another run fetched beyond N are not mistaken for training or validation data.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llm.data.download import download
from llm.data.paths import exclusive_lock

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
LAST_SHARD = 1822  # the dataset's last shard


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def fineweb_dir(base: Path) -> Path:
    return Path(base) / "data" / "fineweb_edu"


def _is_valid_shard(path: Path) -> bool:
    """A complete download opens as parquet and has the text column; a truncated one does not."""
    import pyarrow.parquet as pq

    try:
        return "text" in pq.ParquetFile(path).schema_arrow.names
    except Exception:  # pyarrow raises several types for damaged files; all mean "download again"
        return False


def _download_shard(index: int, directory: Path, base_url: str, backoff_s: float) -> None:
    target = directory / shard_name(index)
    if not target.exists():
        download(f"{base_url}/{shard_name(index)}", target, backoff_s, "fineweb",
                 "check the network and run again (finished shards are kept)", is_valid=_is_valid_shard, timeout_s=30)


def shard_indices(num_train_shards: int, val_shard: str) -> list[int]:
    """The shards a run reads, training shards first and the validation shard last."""
    if not 1 <= num_train_shards <= LAST_SHARD:
        raise ValueError(f"num_train_shards must be between 1 and {LAST_SHARD}, got {num_train_shards}")
    if val_shard == "downloaded_last":
        return list(range(num_train_shards + 1))
    if val_shard == "dataset_last":
        return list(range(num_train_shards)) + [LAST_SHARD]
    raise ValueError(f"val_shard={val_shard!r}: use dataset_last or downloaded_last")


def _linked_view(directory: Path, indices: list[int]) -> Path:
    """A directory holding exactly these shards, as links into the download directory."""
    view = directory / "views" / f"first_{len(indices)}"
    view.mkdir(parents=True, exist_ok=True)
    for index in indices:
        link = view / shard_name(index)
        if not link.is_symlink():
            link.symlink_to(directory / shard_name(index))
    return view


def download_fineweb_edu(base: Path, num_train_shards: int, val_shard: str = "dataset_last",
                         base_url: str = BASE_URL, workers: int = 4, backoff_s: float = 2.0) -> Path:
    """Download the first `num_train_shards` shards and the validation shard `val_shard` names.

    Shards already present are skipped. A failed attempt is retried after backoff_s, 2*backoff_s,
    4*backoff_s, ... seconds; each shard is written under a temporary name and renamed once it
    opens as parquet. Returns the directory a run reads (its last shard validates).
    """
    indices = shard_indices(num_train_shards, val_shard)
    directory = fineweb_dir(base)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [index for index in indices if not (directory / shard_name(index)).exists()]
    print(f"fineweb: {len(indices) - len(missing)} of {len(indices)} shards present in {directory}")
    with exclusive_lock(directory / ".download.lock"), ThreadPoolExecutor(workers) as pool:
        # list() re-raises the first failure here instead of losing it inside the pool.
        list(pool.map(lambda index: _download_shard(index, directory, base_url.rstrip("/"), backoff_s), missing))
        return _linked_view(directory, indices) if val_shard == "downloaded_last" else directory
