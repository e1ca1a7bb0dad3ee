"""The run's journal, `checkpoints/<stage>_journal.jsonl` beside the final adapter: what a Ray Train
restart leaves no other trace of. One line per worker start (pid, the step it resumed from) and, for
GRPO, the prompts each step trained on and the adapter each learner held after it. It is kept across an
interrupted run's re-runs and cleared when a run starts afresh (ray_run.fit)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.layout import journal_file


class WorkerStart(BaseModel):
    """One start of rank 0, as the journal saw it: the first, or a restart."""

    model_config = ConfigDict(extra="forbid")

    resumed_from_step: int
    """The checkpoint's global step it restored; 0 for a fresh start."""
    pid: int


class Restarts(BaseModel):
    """What a training manifest says of its worker starts (and so MLflow: <stage>/worker_restarts)."""

    worker_starts: list[WorkerStart]
    worker_restarts: int
    journal: str


def journal(final_dir: Path | str, event: str, **fields: Any) -> None:
    """Append one event (every rank writes its own lines; each line is one small append)."""
    import ray
    import ray.train

    record = {"event": event, "rank": ray.train.get_context().get_world_rank(), "pid": os.getpid(),
              "node": ray.get_runtime_context().get_node_id(), "time": time.time()} | fields
    path = journal_file(final_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_journal(final_dir: Path) -> list[dict]:
    path = journal_file(final_dir)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def worker_starts(final_dir: Path) -> list[WorkerStart]:
    """Rank 0's starts: the first, then one per restart (Ray Train's FailureConfig, or a re-run)."""
    return [WorkerStart(resumed_from_step=e["resumed_from_step"], pid=e["pid"])
            for e in read_journal(final_dir) if e["event"] == "start" and e["rank"] == 0]


def restarts(final_dir: Path) -> Restarts:
    starts = worker_starts(final_dir)
    return Restarts(worker_starts=starts, worker_restarts=max(len(starts) - 1, 0), journal=str(journal_file(final_dir)))
