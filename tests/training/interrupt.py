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


def wait_gone(pids: list[int], timeout_s: float = 60) -> None:
    """Until none of `pids` is alive. A killed CLI's Ray workers are not all in its process group: a
    learner can outlive the kill for a moment and register one more checkpoint."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes {alive} still alive {timeout_s:g} s after the kill")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"  # gone while we looked


def rerun(cmd: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout_s)


def registered_checkpoints(out: Path, stage: str, storage: str | None = None) -> list[int]:
    """The global step of every checkpoint Ray Train has registered for a stage's run (ray_run.registered_steps).
    `storage` is the run's scaling.storage_path when it is not the default `out/checkpoints/ray`: a folder or
    a URI (s3://...), read through pyarrow as Ray Train writes it."""
    from pyarrow.fs import FileSystem

    from medmcqa_ray.training.ray_run import registered_steps

    fs, root = FileSystem.from_uri(storage or str(Path(out).absolute() / "checkpoints" / "ray"))
    return registered_steps(fs, Path(root, stage).as_posix())


def kill_after_first_checkpoint_and_rerun(stage: str, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`medmcqa-ray <stage>` on configs/ci.yaml, killed once Ray Train registered a checkpoint, checked
    not to be marked complete, then run again to the end."""
    cmd = [sys.executable, "-m", "medmcqa_ray.cli", stage, "--config", "configs/ci.yaml", f"output_dir={out}", *overrides]
    kill_when(cmd, lambda: bool(registered_checkpoints(out, stage)))
    assert not (out / "checkpoints" / f"{stage}_manifest.json").exists()  # nothing marked complete
    return rerun(cmd)
