"""The MLflow tracking server stops in the middle of a pipeline run: the run completes with one warning,
what could not be sent is kept under output_dir/tracking/offline/, and the documented command
(`medmcqa-ray tracking-replay`) sends it once the server is back."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from medmcqa_ray.pipeline import run_stage
from medmcqa_ray.tracking import Tracker

from ..conftest import REPO
from ..test_tracking import start_mlflow_server

pytestmark = pytest.mark.slow


def test_server_stopping_mid_run_loses_no_metrics(ray_session, make_config, tmp_path, caplog):
    server = tmp_path / "server"
    server.mkdir()
    uri, stop = start_mlflow_server(server)
    cfg = make_config(f"tracking.uri={uri}", "tracking.enabled=true", "data.splits=[train,validation]")
    tracker = Tracker(cfg)
    with caplog.at_level(logging.WARNING, logger="medmcqa_ray.tracking"):
        with tracker.pipeline_run("all") as parent_id:
            run_stage("download", cfg, tracker=tracker)
            stop()  # the server goes away between two stages of the same run
            prep = run_stage("prep", cfg, tracker=tracker)
    assert prep.splits["train"].rows > 0  # the work went on
    warnings = [r for r in caplog.records if r.name == "medmcqa_ray.tracking" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    offline = sorted((tmp_path / "out" / "tracking" / "offline").glob("*.jsonl"))
    assert offline, "nothing was kept locally"

    uri, stop = start_mlflow_server(server, port=int(uri.rsplit(":", 1)[1]))  # back, same store and port
    try:
        r = subprocess.run([sys.executable, "-m", "medmcqa_ray.cli", "tracking-replay", "--config", "configs/ci.yaml",
                            f"output_dir={cfg.output_dir}", f"tracking.uri={uri}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        client = MlflowClient(tracking_uri=uri)
        children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent_id}'")
        stages = {run.data.tags["medmcqa_ray.stage"]: run for run in children}
        assert set(stages) == {"download", "prep"}  # the parent continued, not duplicated
        assert stages["prep"].data.metrics["prep/train/rows"] == prep.splits["train"].rows
        assert stages["prep"].info.status == "FINISHED" and client.get_run(parent_id).info.status == "FINISHED"
        assert "data/train/kept" in stages["download"].data.metrics
    finally:
        stop()
