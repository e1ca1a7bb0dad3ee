"""Kill a whole `medmcqa-ray` training run mid-way and run it again: what the resume tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..conftest import REPO


def kill_after_first_checkpoint_and_rerun(stage: str, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """Start `medmcqa-ray <stage>` on configs/ci.yaml, SIGKILL its process group once Ray Train wrote a
    checkpoint, check the stage was not marked complete, then run the same command to the end."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, which dies with it
    cmd = [sys.executable, "-m", "medmcqa_ray.cli", stage, "--config", "configs/ci.yaml", f"output_dir={out}", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = out / "checkpoints" / "ray" / stage
    deadline = time.monotonic() + 400
    while not list(runs.glob("checkpoint_*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert list(runs.glob("checkpoint_*")), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job dies mid-run
    proc.wait()
    assert not (out / "checkpoints" / f"{stage}_manifest.json").exists()  # nothing marked complete
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
