"""The one reader of formatted rows (prep's output), for SFT, GRPO, sweeps and evaluation: a folder of
Parquet shards, or a JSON-lines file of rows in the same schema (eval.input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from medmcqa_ray.data.shards import read_shard
from medmcqa_ray.errors import StageError


def read_formatted(source: Path, columns: Optional[list[str]] = None, limit: Optional[int] = None,
                   purpose: str = "use", unlabelled: Optional[list[str]] = None) -> pa.Table:
    """The labelled rows of `source`, in file order, cut to `limit`. `purpose` ends the error raised when
    there are none ("nothing to <purpose>"). Rows without an answer are never returned: pass a list as
    `unlabelled` to have their ids appended to it (so a caller can count them)."""
    source = Path(source)
    if not source.exists():
        raise StageError(f"{source} does not exist: run download and prep first")
    wanted = None if columns is None else [*columns, *(["answer_label"] if "answer_label" not in columns else [])]
    if source.is_file():
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        table = pa.Table.from_pylist(rows) if rows else pa.table({"answer_label": pa.array([], pa.string())})
        if wanted and rows:
            table = table.select([c for c in wanted if c in table.column_names])
    else:
        files = sorted(source.glob("*.parquet"))
        if not files:
            raise StageError(f"{source} has no formatted {source.name} shards: run download and prep first")
        table = pa.concat_tables([read_shard(f, wanted) for f in files])
    labelled = pc.is_valid(table["answer_label"])
    if unlabelled is not None and "id" in table.column_names:
        unlabelled.extend(table.filter(pc.invert(labelled))["id"].to_pylist())
    table = table.filter(labelled)
    if table.num_rows == 0:
        raise StageError(f"{source} has no labelled rows: nothing to {purpose} (is it the test split?)")
    if columns is not None and "answer_label" not in columns:
        table = table.drop_columns(["answer_label"])
    return table.slice(0, limit) if limit else table
