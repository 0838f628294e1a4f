"""Reading a dataset stored as a directory of parquet shards.

The layout is the one of the reference's pretraining data: files that sort in order, each holding
one column of document text split into row groups. The last shard is the validation split, all
others are training data. A row group is the smallest unit read at once and the unit handed out to
ranks, so readers here work row group by row group.
"""

from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

SPLITS = ("train", "val")


def list_shards(directory: str | Path) -> list[Path]:
    """All parquet shards of a dataset directory, sorted by name (the last one is validation)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory {directory} does not exist; check the data path")
    shards = sorted(path for path in directory.glob("*.parquet") if path.is_file())
    if not shards:
        raise FileNotFoundError(f"no .parquet shards in {directory}; download or build the dataset first")
    if len(shards) < 2:
        raise ValueError(
            f"{directory} holds only {shards[0].name}; a dataset needs at least 2 shards "
            "(training shards, then the last one for validation)"
        )
    return shards


def split_shards(shards: list[Path], split: str) -> list[Path]:
    """The shards of one split: train = all but the last, val = the last."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return shards[:-1] if split == "train" else shards[-1:]


class ShardReader:
    """Reads the text column of a fixed list of shards by (shard index, row group index).

    Shard metadata is read once per shard; the most recently read row group is kept, because
    consumers take a row group's documents in several slices.
    """

    def __init__(self, shard_paths: list[Path], text_column: str = "text"):
        if not shard_paths:
            raise ValueError("no shards given; pass at least one parquet file")
        self.shard_paths = [Path(path) for path in shard_paths]
        self.text_column = text_column
        self._row_counts: dict[int, list[int]] = {}
        self._cached_key: tuple[int, int] | None = None
        self._cached_texts: list[str] = []

    def row_counts(self, shard: int) -> list[int]:
        """Number of documents in each row group of shard number `shard`."""
        if shard not in self._row_counts:
            path = self.shard_paths[shard]
            if not path.exists():
                raise FileNotFoundError(f"shard {path} is missing; re-download or rebuild the dataset")
            parquet = pq.ParquetFile(path)
            if self.text_column not in parquet.schema_arrow.names:
                raise ValueError(
                    f"{path} has no column {self.text_column!r} (it has {parquet.schema_arrow.names}); "
                    "set the text column name to one of these"
                )
            metadata = parquet.metadata
            self._row_counts[shard] = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        return self._row_counts[shard]

    def read_row_group(self, shard: int, row_group: int) -> list[str]:
        """All document texts of one row group."""
        key = (shard, row_group)
        if key != self._cached_key:
            self.row_counts(shard)  # validates the file and the column first
            table = pq.ParquetFile(self.shard_paths[shard]).read_row_group(row_group, columns=[self.text_column])
            self._cached_texts = table.column(self.text_column).to_pylist()
            self._cached_key = key
        return self._cached_texts

    def iter_texts(self) -> Iterator[str]:
        """Every document of every shard in storage order."""
        for shard in range(len(self.shard_paths)):
            for row_group in range(len(self.row_counts(shard))):
                yield from self.read_row_group(shard, row_group)
