"""The colocated sequence as it ran: the learner's pool and each engine append one JSON line per call
(empty_cache, stage, wake, load_adapter, generate, sleep) to `rollout.call_trace`, a file that several
processes share (each line is one O_APPEND write). What a GPU run is checked against, and what a test
asserts the order of on CPU."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict


class TracedCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    who: str
    """`learner` (the pool, in the learner's process) or `engine`."""
    call: str
    pid: int
    time: float


class CallTrace:
    def __init__(self, path: Optional[Path], who: str):
        self.path, self.who = path, who

    def __call__(self, call: str, **fields) -> None:
        if self.path is None:
            return
        line = TracedCall(who=self.who, call=call, pid=os.getpid(), time=time.time(), **fields).model_dump_json() + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read_trace(path: Path) -> list[TracedCall]:
    return [TracedCall.model_validate(json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]
