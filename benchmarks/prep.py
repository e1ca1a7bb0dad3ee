"""Rows/second of download + prep: the Ray Data pipeline vs a single-process loop over the same functions.

    python benchmarks/prep.py [--rows 183000] [--source ../shared/medmcqa/hf/train.jsonl]

Builds a MedMCQA-sized train split by replicating real rows with fresh ids, then, in the same run,
times (1) the download and prep stages on Ray Data and (2) one Python loop calling the same
normalise / finalise / format functions and writing the same Parquet files. Prints JSON: both rates,
their ratio, peak memory, and the machine's core count. Ray start-up is timed separately: it is paid
once per job, not per row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmcqa_ray.config import load_config  # noqa: E402
from medmcqa_ray.data.dataset_plan import plan_finalise  # noqa: E402
from medmcqa_ray.data.download import normalise_kwargs, normalise_task, write_quarantine  # noqa: E402
from medmcqa_ray.data.normalise import finalise_row  # noqa: E402
from medmcqa_ray.data.records import FORMATTED, KEPT, NORMALISED, PROCESSED, QUARANTINED  # noqa: E402
from medmcqa_ray.data.sources import discover, plan_read_tasks  # noqa: E402
from medmcqa_ray.formatting import format_row  # noqa: E402


def build_input(source: Path, rows: int, out: Path) -> int:
    base = [json.loads(ln) for ln in source.read_text().splitlines() if ln.strip()]
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with (out / "train.jsonl").open("w") as f:
        while n < rows:
            for row in base:
                f.write(json.dumps(row | {"id": str(uuid.UUID(int=n))}) + "\n")
                n += 1
    return n


class PeakRSS:
    """Peak summed RSS of this process and Ray's worker processes, sampled every 0.2 s (the worker list
    is refreshed every second, so sampling costs the measured run little CPU)."""

    def __init__(self, include_ray: bool):
        self.include_ray, self.peak, self._stop = include_ray, 0, threading.Event()

    def _workers(self) -> list:
        if not self.include_ray:
            return []
        return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("ray::")]

    def _rss(self, procs: list) -> int:
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        def loop():
            me, workers, refreshed = psutil.Process(), [], 0.0
            while not self._stop.is_set():
                if time.monotonic() - refreshed > 1.0:
                    workers, refreshed = self._workers(), time.monotonic()
                self.peak = max(self.peak, self._rss([me, *workers]))
                time.sleep(0.2)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def loop_pipeline(cfg, out: Path) -> None:
    """The same work as the two stages, in one process, one row at a time."""
    files = discover(Path(cfg.data.path), cfg.data.splits)
    records = [r for t in plan_read_tasks(files, cfg.data.chunk_bytes) for r in normalise_task(t, **normalise_kwargs(cfg.data))]
    plan = plan_finalise(pa.Table.from_pylist(records, schema=NORMALISED), cfg.data.layout, cfg.data.limit)
    records = [finalise_row(r, **plan.kwargs(r["split"])) for r in records]
    splits = sorted({r["split"] for r in records})
    for split in splits:
        kept = [r for r in records if r["split"] == split and r["status"] == KEPT]
        (out / "processed" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(kept, schema=PROCESSED), out / "processed" / split / "part-0.parquet")
        formatted = pa.Table.from_pylist([format_row(r, cfg.format) for r in kept], schema=FORMATTED)
        (out / "formatted" / split).mkdir(parents=True)
        shards = cfg.format.num_shards
        step = -(-formatted.num_rows // shards)
        for i in range(shards):
            pq.write_table(formatted.slice(i * step, step), out / "formatted" / split / f"part-{i}.parquet")
    write_quarantine([r for r in records if r["status"] == QUARANTINED], out / "quarantine", splits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=183_000)
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "medmcqa" / "hf" / "train.jsonl")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medmcqa-bench-"))
    try:
        n = build_input(args.source, args.rows, work / "input")
        overrides = [f"output_dir={work / 'ray'}", "data.source=local", f"data.path={work / 'input'}", "data.layout=hf"]
        cfg = load_config([REPO / "configs" / "local.yaml"], overrides)

        import ray

        from medmcqa_ray.pipeline import run_stage
        from medmcqa_ray.runtime import ensure_ray

        t0 = time.perf_counter()
        ensure_ray(cfg.ray)
        ray_start = time.perf_counter() - t0
        with PeakRSS(include_ray=True) as mem_ray:
            t0 = time.perf_counter()
            manifest = run_stage("download", cfg, force=True)
            run_stage("prep", cfg, force=True)
            ray_seconds = time.perf_counter() - t0
        ray.shutdown()

        with PeakRSS(include_ray=False) as mem_loop:
            t0 = time.perf_counter()
            loop_pipeline(cfg, work / "loop")
            loop_seconds = time.perf_counter() - t0

        kept = manifest.splits["train"].kept + manifest.splits["train"].selected  # the loop carves none
        loop_kept = pq.ParquetDataset(work / "loop" / "processed" / "train").read().num_rows
        assert kept == loop_kept, (kept, loop_kept)
        print(json.dumps({
            "benchmark": "download+prep",
            "rows": n,
            "cores": os.cpu_count(),
            "ray_data": {"seconds": round(ray_seconds, 2), "rows_per_s": round(n / ray_seconds), "peak_rss_mb": mem_ray.peak >> 20},
            "loop": {"seconds": round(loop_seconds, 2), "rows_per_s": round(n / loop_seconds), "peak_rss_mb": mem_loop.peak >> 20},
            "speedup_ray_vs_loop": round(loop_seconds / ray_seconds, 2),
            "ray_start_seconds": round(ray_start, 2),
            "rows_kept": kept,
        }, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
