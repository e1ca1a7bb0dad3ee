"""The prep stage on Ray Data: processed rows -> chat prompts + SFT targets, as sharded Parquet.

Rendering is `formatting.format_row`, the same function every later stage uses to rebuild a prompt.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from medmcqa_ray.config import Config, FormatConfig
from medmcqa_ray.data.download import write_split_parquet
from medmcqa_ray.data.records import FORMATTED
from medmcqa_ray.errors import StageError
from medmcqa_ray.formatting import format_row

log = logging.getLogger(__name__)


def format_batch(batch: pa.Table, cfg: FormatConfig) -> pa.Table:
    return pa.Table.from_pylist([format_row(r, cfg) for r in batch.to_pylist()], schema=FORMATTED)


def processed_splits(data_dir: Path) -> list[str]:
    root = data_dir / "processed"
    if not root.is_dir():
        raise StageError(f"{root} does not exist: run the download stage first")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def run_prep(cfg: Config) -> dict:
    data_dir = Path(cfg.output_dir) / "data"
    staging = data_dir / ".staging-formatted"
    shutil.rmtree(staging, ignore_errors=True)
    counts = {}
    for split in processed_splits(data_dir):
        rows = pq.ParquetDataset(data_dir / "processed" / split).read().num_rows
        counts[split] = {"rows": rows, "with_target": 0, "shards": 1}
        out = staging / split
        if rows == 0:
            out.mkdir(parents=True)
            pq.write_table(FORMATTED.empty_table(), out / "part-empty.parquet")
            continue
        ds = ray.data.read_parquet(str(data_dir / "processed" / split))
        ds = ds.map_batches(format_batch, batch_format="pyarrow", fn_kwargs={"cfg": cfg.format})
        ds = ds.repartition(min(cfg.format.num_shards, rows)).materialize()
        write_split_parquet(ds, out, FORMATTED)
        completions = pq.ParquetDataset(out).read(columns=["completion"]).column("completion")
        counts[split]["with_target"] = rows - completions.null_count
        counts[split]["shards"] = len(list(out.glob("*.parquet")))
        log.info("prep: %s: %d rows in %d shards", split, rows, counts[split]["shards"])
    final = data_dir / "formatted"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return {"stage": "prep", "splits": counts, "format": cfg.format.model_dump(mode="json")}
