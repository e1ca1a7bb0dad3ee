"""`python jobs/full.py --config configs/ci.yaml` run as a user runs it: from a directory of their own,
with the config's own relative output_dir (Ray Train moves its workers elsewhere, so a path resolved late
named another folder there), a planted token that must appear nowhere, and a changed eval budget that
must re-run eval rather than return stale results; what the terminal shows is the short story, the rest
is in the log files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import REPO
from .test_jobs import TINY

pytestmark = pytest.mark.slow
TOKEN = f"hf_{uuid.uuid4().hex}"  # made here, so no source file holds it


def ray_sessions() -> set[Path]:
    return set(Path("/tmp/ray").glob("session_2*"))


def files_holding(secret: str, *roots: Path) -> list[str]:
    """Every file under the roots whose bytes contain the secret (sqlite stores and pickles included)."""
    hits = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                if secret.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass  # a socket or a file removed while we walk
    return hits


def run_job(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(REPO / "jobs" / "full.py"), "--config", "configs/ci.yaml", *TINY, *args],
                          cwd=work, env=env, capture_output=True, text=True, timeout=1500)


def test_full_job_from_its_own_directory_with_relative_paths(tmp_path):
    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "ci.yaml", work / "configs" / "ci.yaml")
    before = ray_sessions()
    r = run_job(work, f"data.hub_token={TOKEN}", "eval.max_new_tokens=12")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    out = work / "outputs" / "ci"  # ci.yaml's own output_dir, against the directory the job started in
    assert f"output_dir: {out}\n" in r.stdout
    for manifest in ("data/manifest.json", "data/formatted/manifest.json", "checkpoints/sft_manifest.json",
                     "checkpoints/grpo_manifest.json", "eval/manifest.json"):
        assert (out / manifest).is_file(), manifest
    table = r.stdout.split("== eval")[-1]
    assert all(head in table for head in ("base", "sft", "grpo")), table
    assert "mlflow ui --backend-store-uri sqlite:///" in r.stdout

    # What the terminal shows: the tables, one bar per long stage, where the logs are. Workers' output,
    # Ray's and Ray Data's INFO lines went to the log files instead.
    terminal = r.stdout + r.stderr
    assert len(terminal.split("\n")) < 80, terminal  # tqdm redraws with \r, not new lines
    for noise in ("LOAD_GLOBAL", "Disassembly", "TrainController", "RayTrainWorker", "streaming_executor",
                  "Progress bars disabled", "INFO", "core_worker.cc"):
        assert noise not in terminal, noise
    for stage_bar in ("sft: 100%", "grpo: 100%", "eval base, sft, grpo: 100%"):
        assert stage_bar in r.stderr, stage_bar
    logs = re.search(r"^Logs: (\S+) \(workers: (\S+)\)", r.stdout, re.M)
    log_file, ray_logs = Path(logs[1]), Path(logs[2])
    assert log_file.parent == out / "logs"
    logged = log_file.read_text()
    assert "download: done" in logged and "streaming_executor" in logged
    # Ray's C++ warning about Ray Data's pool actors (evaluation/heads.py says why it is let be): in the log.
    # Should a Ray upgrade stop writing it, heads.py can drop first_with_native_stderr_to_log.
    assert "has constructor arguments in the object store" in logged
    # Ray Data's DataContext, some kilobytes per dataset, in no log file: ours, nor Ray Data's own.
    ray_data_logs = list((ray_logs / "ray-data").glob("*.log"))
    assert any(p.name == "ray-data.log" for p in ray_data_logs)
    for path in [log_file, *ray_data_logs]:
        assert "Data Context for dataset" not in path.read_text(errors="replace"), path

    # The token reached no output: not the console, not a manifest or the MLflow store under output_dir,
    # not the logs of the Ray instance the job started.
    assert TOKEN not in r.stdout + r.stderr
    assert files_holding(TOKEN, out, *(ray_sessions() - before)) == []

    # A changed generation budget re-runs eval (its cache key hashes the real value); the rest is up to date.
    again = run_job(work, f"data.hub_token={TOKEN}", "eval.max_new_tokens=13")
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("download", "prep", "sft", "grpo"):
        assert f"== {stage} (skipped: up to date)" in again.stdout, stage
    assert "== eval\n" in again.stdout and "== eval (skipped" not in again.stdout
