"""Kill a whole training run mid-way (SIGKILL to its process group) and run it again: what the resume
tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..conftest import REPO


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, which dies with it
    return env


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout_s: float = 400) -> None:
    """Start `cmd` in the repo in its own process group and SIGKILL the group once `ready()` holds."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not ready() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    try:
        assert ready(), f"the run ended or timed out before it was ready to be killed (exit code {proc.poll()})"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job dies mid-run
        proc.wait()


def rerun(cmd: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout_s)


def kill_after_first_checkpoint_and_rerun(stage: str, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`medmcqa-ray <stage>` on configs/ci.yaml, killed once Ray Train registered a checkpoint, checked
    not to be marked complete, then run again to the end. Registered, not just written: with several
    learners the folder appears when the first one saves, and a kill before Ray Train's controller has
    every learner's report loses that checkpoint (the run then restarts from step 0)."""
    cmd = [sys.executable, "-m", "medmcqa_ray.cli", stage, "--config", "configs/ci.yaml", f"output_dir={out}", *overrides]
    kill_when(cmd, lambda: (out / "checkpoints" / "ray" / stage / "checkpoint_manager_snapshot.json").exists())
    assert not (out / "checkpoints" / f"{stage}_manifest.json").exists()  # nothing marked complete
    return rerun(cmd)
