"""The download stage on Ray Data: read -> normalise -> quarantine -> write Parquet + manifest.

Pass 1 (parallel): each read task parses its slice of a file and normalises every row into a
`records.NORMALISED` record. The driver then gathers six light columns and decides what needs all
rows (layout, duplicate ids, limit). Pass 2 (parallel) applies those decisions; it is skipped when
the layout was known in pass 1 and nothing else needs doing. Kept rows go to data/processed/<split>/
(train's selection rows, data.selection_rows, to data/processed/selection/),
quarantined rows (with their raw text) to data/quarantine/<split>.jsonl, and data/manifest.json
counts every row read. Outputs are written to a staging folder and swapped in at the end, with the
old manifest removed first, so an interrupted run never leaves an output that looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Literal, Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Config, DataSection
from medmcqa_ray.data.dataset_plan import KEY_COLUMNS, FinalisePlan, plan_finalise
from medmcqa_ray.data.normalise import finalise_row, normalise_row
from medmcqa_ray.data.records import KEPT, LIMITED, NORMALISED, PROCESSED, QUARANTINED
from medmcqa_ray.data.selection import FROM_SPLIT, SelectionSplit, choose_selection, ids_digest
from medmcqa_ray.data.shards import write_split_parquet
from medmcqa_ray.data.sources import (ReadTask, SourceFile, SourceInfo, plan_read_tasks, read_task_rows, resolve_source,
                                      source_key, task_dict)
from medmcqa_ray.layout import SELECTION, layout
from medmcqa_ray.stage import Manifest, Stage, hash_parts

log = logging.getLogger(__name__)


def known_layout(cfg: DataSection) -> str | None:
    """The cop layout when known before reading: configured, or fixed by the source (the hub dataset and
    the bundled samples are 0-based); None means detect it from the values."""
    if cfg.layout != "auto":
        return cfg.layout
    return "hf" if cfg.source in ("hub", "sample", "synthetic") else None


def normalise_kwargs(cfg: DataSection) -> dict:
    return {"max_question_chars": cfg.max_question_chars, "repair_rt": cfg.repair_dropped_rt,
            "layout": known_layout(cfg)}


def normalise_task(task: ReadTask, **kwargs) -> list[dict]:
    return [
        normalise_row(raw, split=task.split, source=source, source_file=task.path, ordinal=ordinal, **kwargs)
        for raw, source, ordinal in read_task_rows(task)
    ]


def _normalise_batch(batch: pa.Table, **kwargs) -> pa.Table:
    records = [rec for t in batch.to_pylist() for rec in normalise_task(ReadTask(**t), **kwargs)]
    return pa.Table.from_pylist(records, schema=NORMALISED)


# finalise_row reads and writes only these; the text columns pass through as Arrow, unconverted.
_DECISION_COLUMNS = ["split", "ordinal", "id", "cop_raw", "status", "reason", "detail", "flags", "answer_index", "answer_label"]


def _finalise_batch(batch: pa.Table, plan: FinalisePlan) -> pa.Table:
    cols = batch.select(_DECISION_COLUMNS).to_pydict()
    rows = [finalise_row(dict(zip(_DECISION_COLUMNS, values)), **plan.kwargs(values[0]))
            for values in zip(*(cols[c] for c in _DECISION_COLUMNS))]
    for name in _DECISION_COLUMNS[4:]:
        column = pa.array([r[name] for r in rows], type=NORMALISED.field(name).type)
        batch = batch.set_column(batch.schema.get_field_index(name), name, column)
    return batch


def _select(batch: pa.Table, split: str, ids: list[str], in_ids: bool) -> pa.Table:
    """Kept rows of `split`, with (in_ids) or without the rows whose id is in `ids`."""
    mask = pc.and_(pc.equal(batch["split"], split), pc.equal(batch["status"], KEPT))
    if ids or in_ids:
        member = pc.is_in(batch["id"], value_set=pa.array(ids, pa.string()))
        mask = pc.and_(mask, member if in_ids else pc.invert(member))
    return batch.filter(mask).select(PROCESSED.names)


def _blocks(ds: "ray.data.dataset.MaterializedDataset", columns: list[str]) -> pa.Table:
    """Columns of a materialized dataset as one Arrow table in the driver. On one node this maps the
    object-store blocks (no copy); a projection through Ray Data would cost another execution."""
    tables = [t.select(columns) for t in ray.get(ds.to_arrow_refs())]
    return pa.concat_tables(tables) if tables else NORMALISED.empty_table().select(columns)


def _value_counts(values: pa.Array) -> dict:
    return {c["values"].as_py(): c["counts"].as_py() for c in pc.value_counts(values)} if len(values) else {}


def count_rows(table: pa.Table, splits: list[str]) -> dict:
    """The manifest's per-split accounting, read = kept + quarantined + limited (vectorised: the
    driver never turns 183k rows into Python objects)."""
    counts = {}
    for split in splits:
        rows = table.filter(pc.equal(table["split"], split))
        status = _value_counts(rows["status"])
        kept = rows.filter(pc.equal(rows["status"], KEPT))
        quarantined = rows.filter(pc.equal(rows["status"], QUARANTINED))
        counts[split] = {
            "read": rows.num_rows, "kept": status.get(KEPT, 0), "quarantined": status.get(QUARANTINED, 0),
            "limited": status.get(LIMITED, 0),
            "reasons": dict(sorted(_value_counts(quarantined["reason"]).items())),
            "flags": dict(sorted(_value_counts(pc.list_flatten(kept["flags"])).items())),
        }
    return counts


def write_quarantine(rows: list[dict], folder: Path, splits: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["ordinal"]):
        by_split[r["split"]].append(r)
    for split in splits:
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in by_split[split]:
                try:
                    raw = json.loads(r["raw"])
                except (TypeError, ValueError):
                    raw = r["raw"]
                record = {"split": split, "source": r["source"], "reason": r["reason"], "detail": r["detail"], "raw": raw}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


class SplitCounts(BaseModel):
    """One split's accounting: read = kept + quarantined + limited + selected."""

    model_config = ConfigDict(extra="forbid")
    read: int
    kept: int
    quarantined: int
    limited: int
    selected: int = 0
    """Kept rows moved to the selection split (train only)."""
    reasons: dict[str, int]
    flags: dict[str, int]


class DownloadManifest(Manifest):
    stage: Literal["download"] = "download"
    splits: dict[str, SplitCounts]
    source: SourceInfo
    limit: Optional[int] = None
    selection: Optional[SelectionSplit] = None
    """The split carved from train for choosing (data.selection_rows); None when turned off."""
    note: str = ""

    def metrics(self) -> dict[str, float]:
        counts = {f"data/{split}/{k}": getattr(c, k) for split, c in self.splits.items()
                  for k in ("read", "kept", "quarantined", "limited")}
        return counts | ({f"data/{SELECTION}/rows": self.selection.rows} if self.selection else {})

    def table(self) -> str:
        lines = [f"{'split':<12}{'read':>8}{'kept':>8}{'quarant.':>10}{'limited':>9}  top reasons"]
        for split, c in self.splits.items():
            top = ", ".join(f"{k}={v}" for k, v in sorted(c.reasons.items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"{split:<12}{c.read:>8}{c.kept:>8}{c.quarantined:>10}{c.limited:>9}  {top}")
        if self.selection:
            lines.append(f"{SELECTION:<12}{'':>8}{self.selection.rows:>8}{'':>19}  from {self.selection.from_split}: "
                         "what sweeps rank on; validation is only reported")
        lines.append(f"source: {self.source.name} (layout {self.source.layout})")
        return "\n".join(lines)


def run_download(cfg: Config) -> DownloadManifest:
    """Run the stage; returns the manifest (pipeline.run_stage adds config_hash and writes it)."""
    paths = layout(cfg)
    files, source_info = resolve_source(cfg.data, paths.hub_download)
    tasks = plan_read_tasks(files, cfg.data.chunk_bytes)
    wanted: list[str] = list(cfg.data.splits)
    splits = sorted({split for _, split in files}, key=wanted.index)
    log.info("download: %d files, %d read tasks, splits %s, from %s", len(files), len(tasks), splits, source_info.name)

    items = [task_dict(t) for t in tasks]
    normalised = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _normalise_batch, batch_size=1, batch_format="pyarrow", fn_kwargs=normalise_kwargs(cfg.data)
    ).materialize()
    cop_layout = known_layout(cfg.data)
    plan = plan_finalise(_blocks(normalised, KEY_COLUMNS), cop_layout or "auto", cfg.data.limit)
    final = normalised
    if not (cop_layout and plan.changes_nothing_after):  # else pass 1 already did all of pass 2's work
        final = normalised.map_batches(_finalise_batch, batch_format="pyarrow", fn_kwargs={"plan": plan}).materialize()
    bookkeeping = _blocks(final, ["split", "ordinal", "id", "answer_index", "status", "reason", "detail", "flags",
                                  "source", "raw"])
    counts = count_rows(bookkeeping.select(["split", "status", "reason", "flags"]), splits)
    selected = choose_selection(bookkeeping.select(["split", "id", "status", "answer_index"]), cfg.data.selection_rows)
    if selected:
        counts[FROM_SPLIT]["kept"] -= len(selected)
        counts[FROM_SPLIT]["selected"] = len(selected)

    staging = paths.data / ".staging-download"
    shutil.rmtree(staging, ignore_errors=True)
    for split in splits:
        kept = final.map_batches(_select, batch_format="pyarrow", fn_kwargs={"split": split, "ids": selected, "in_ids": False})
        write_split_parquet(kept, staging / "processed" / split, PROCESSED)
    if selected:
        chosen = final.map_batches(_select, batch_format="pyarrow", fn_kwargs={"split": FROM_SPLIT, "ids": selected, "in_ids": True})
        write_split_parquet(chosen, staging / "processed" / SELECTION, PROCESSED)
    quarantined = bookkeeping.filter(pc.equal(bookkeeping["status"], QUARANTINED)).to_pylist()
    write_quarantine(quarantined, staging / "quarantine", splits)

    # A manifest must never describe outputs it was not written for: drop the old one before the swap.
    paths.data_manifest.unlink(missing_ok=True)
    for name, final_dir in (("processed", paths.processed_root), ("quarantine", paths.quarantine)):
        shutil.rmtree(final_dir, ignore_errors=True)
        (staging / name).rename(final_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return DownloadManifest(
        splits=counts,
        source=source_info.model_copy(update={"layout": plan.layout,
                                              "files": [SourceFile(path=str(p), split=s) for p, s in files]}),
        limit=cfg.data.limit,
        selection=SelectionSplit(rows=len(selected), ids_sha256=ids_digest(selected)) if selected else None,
        note=f"read = kept + quarantined + {LIMITED} (rows beyond data.limit) + selected (moved to the {SELECTION} split); "
             "quarantine reasons in docs/data.md",
    )


class DownloadStage(Stage[DownloadManifest]):
    name = "download"
    manifest_type = DownloadManifest

    def inputs(self, cfg: Config) -> list[Path]:
        return [cfg.data.local_path()] if cfg.data.source == "local" else []

    def output(self, cfg: Config) -> Path:
        return layout(cfg).processed_root

    def manifest_path(self, cfg: Config) -> Path:
        return layout(cfg).data_manifest

    def cache_key(self, cfg: Config) -> str:
        return hash_parts(cfg.section_hash("data"), source_key(cfg.data))

    def run(self, cfg: Config) -> DownloadManifest:
        return run_download(cfg)


STAGE = DownloadStage()
