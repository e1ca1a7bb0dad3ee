"""Reading the Parquet shards one stage leaves for the next, with an error that names a damaged file.

pyarrow's own message for a truncated or foreign file ("Parquet magic bytes not found in footer")
does not say which of a folder's shards it was, and Ray wraps it further."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from medmcqa_ray.errors import DataFileError


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
