"""Ray Train checkpoints on a URI store (`scaling.storage_path=s3://...`), against a real S3 API on
127.0.0.1 (moto's server): the run key is kept in the store, beside the run's checkpoints, and checked
there, so a killed run resumes and a run with other settings starts afresh, as on a local folder."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from pathlib import Path

import pytest

from medmcqa_ray.training.journal import worker_starts
from medmcqa_ray.training.ray_run import prepare_run_dir

from .interrupt import kill_when, registered_checkpoints, rerun, wait_gone
from .test_sft import config

BUCKET = "bucket"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A bucket on a local S3 server; this process and the ones it starts (the CLI, its Ray and Ray
    Train's workers inherit the environment) reach it through AWS's standard variables."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    werkzeug = logging.getLogger("werkzeug")  # one line per request otherwise: the test polls the bucket
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    endpoint = f"http://127.0.0.1:{port}"
    # pyarrow's S3 (which Ray Train uses) and boto3 both honour AWS_ENDPOINT_URL; dummy credentials, and
    # no profile, config file or instance metadata from this machine can redirect them.
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield
    server.stop()
    werkzeug.setLevel(level)


def _store(storage: str):
    from ray.train.v2._internal.execution.storage import get_fs_and_path

    return get_fs_and_path(storage)


def _read(fs, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def _names(fs, folder: str) -> set[str]:
    from pyarrow.fs import FileSelector

    return {Path(i.path).name for i in fs.get_file_info(FileSelector(folder, allow_not_found=True))}


def _checkpoint_dirs(fs, run: str) -> set[str]:
    from pyarrow.fs import FileSelector, FileType

    return {Path(i.path).name for i in fs.get_file_info(FileSelector(run, allow_not_found=True))
            if i.type == FileType.Directory and Path(i.path).name.startswith("checkpoint_")}


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_the_run_key_is_kept_and_checked_in_the_store(kind, tmp_path, request):
    """The same bookkeeping for a folder and a bucket: an interrupted run of the same key resumes with
    its checkpoints; other settings, or a finished run, start afresh and the old run is deleted."""
    if kind == "s3":
        request.getfixturevalue("s3")
    fs, root = _store(str(tmp_path / "store") if kind == "folder" else f"s3://{BUCKET}/unit")
    run = f"{root}/sft"
    assert not prepare_run_dir(fs, run, "key-a")  # nothing stored yet
    fs.create_dir(f"{run}/checkpoint_1")
    with fs.open_output_stream(f"{run}/checkpoint_1/state") as f:
        f.write(b"x")
    assert prepare_run_dir(fs, run, "key-a")  # killed, same settings: resume
    assert _names(fs, run) == {"medmcqa_run_key", "checkpoint_1"}
    assert not prepare_run_dir(fs, run, "key-b")  # other settings: the old run goes
    assert _names(fs, run) == {"medmcqa_run_key"} and _read(fs, f"{run}/medmcqa_run_key") == "key-b"
    fs.create_dir(f"{run}/checkpoint_2")
    with fs.open_output_stream(f"{run}/finished") as f:
        f.write(b"ok")
    assert not prepare_run_dir(fs, run, "key-b")  # finished: a re-run trains again
    assert _names(fs, run) == {"medmcqa_run_key"}


@pytest.mark.slow
@pytest.mark.extended
def test_killed_sft_on_s3_resumes_from_its_last_registered_checkpoint(ray_session, s3, tmp_path):
    """SFT with its Ray Train checkpoints in a bucket, run as a CLI process killed (SIGKILL to its
    process group) once Ray Train registered a checkpoint there: run again, it resumes from the last
    checkpoint registered in the bucket, ends at max_steps, and marks the run finished there, so the
    next run of this config trains afresh. (A changed config starting afresh over a killed run's
    folder is test_the_run_key_is_kept_and_checked_in_the_store[s3], on the same bookkeeping.)"""
    from medmcqa_ray.pipeline import run_stage

    out = tmp_path / "out"
    store = f"s3://{BUCKET}/medmcqa/checkpoints"
    overrides = [f"scaling.storage_path={store}", "sft.max_steps=6", "sft.save_steps=2"]
    cfg = config(out, *overrides)
    run_stage("download", cfg)
    run_stage("prep", cfg)
    fs, root = _store(store)
    run, final = f"{root}/sft", out / "checkpoints" / "sft"
    sft = [sys.executable, "-m", "medmcqa_ray.cli", "sft", "--config", "configs/ci.yaml", f"output_dir={out}", *overrides]

    kill_when(sft, lambda: bool(registered_checkpoints(out, "sft", store)))
    wait_gone([s.pid for s in worker_starts(final)])  # the learner too: it could register one more
    assert not (out / "checkpoints" / "sft_manifest.json").exists()  # nothing marked complete
    registered = settled(lambda: registered_checkpoints(out, "sft", store))
    key = _read(fs, f"{run}/medmcqa_run_key")
    assert registered and key and _checkpoint_dirs(fs, run)

    r = rerun(sft)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "checkpoints" / "sft_manifest.json").read_text())
    assert manifest["resumed"] and manifest["resumed_from_step"] == registered[-1]
    assert [s["resumed_from_step"] for s in manifest["worker_starts"]] == [0, registered[-1]]
    assert [h["step"] for h in manifest["history"] if "loss" in h][-1] == 6
    assert manifest["checkpoint"].startswith(f"{run}/checkpoint_")
    assert _read(fs, f"{run}/medmcqa_run_key") == key
    assert _read(fs, f"{run}/finished") == "ok"  # so a later run of this config trains again
    assert not (out / "checkpoints" / "ray").exists()  # nothing went to the default local store


def settled(read, interval_s: float = 0.5, timeout_s: float = 10):
    """`read()` once two reads `interval_s` apart agree. The S3 server runs in this process: a request
    the killed run sent just before it died can still land after the kill."""
    last, deadline = read(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = read()
        if now == last:
            return now
        last = now
    return last
