"""The Parquet shards one stage leaves for the next: writing a split's folder, and reading a shard with an
error that names a damaged file.

pyarrow's own message for a truncated or foreign file ("Parquet magic bytes not found in footer")
does not say which of a folder's shards it was, and Ray wraps it further."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from medmcqa_ray.errors import DataFileError

if TYPE_CHECKING:
    import ray.data


def _damaged(path: Path, e: Exception) -> DataFileError:
    return DataFileError(f"{path}: not a readable Parquet file ({e}); it was damaged after it was written: "
                         "re-run the stage that writes it with --force")


def read_shard(path: Path, columns: Optional[list[str]] = None, schema: Optional[pa.Schema] = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, schema=schema)
    except (pa.ArrowException, OSError) as e:
        raise _damaged(path, e) from None


def shard_metadata(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as e:
        raise _damaged(path, e) from None


def write_empty_parquet(folder: Path, schema: pa.Schema) -> None:
    """An empty split still gets one file, so readers see its schema."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.empty_table(), folder / "part-empty.parquet")


def write_split_parquet(ds: "ray.data.Dataset", folder: Path, schema: pa.Schema) -> None:
    ds.write_parquet(str(folder))
    if not any(folder.glob("*.parquet")):
        write_empty_parquet(folder, schema)
