"""The acceptance run: `medmcqa-ray baseline --config configs/local.yaml eval.limit=32` on the embedded
SmolLM2-135M-Instruct writes the eval files and an MLflow run that MlflowClient can find."""

import json
import os
import subprocess
import sys

import pytest

from medmcqa_ray.pipeline import run_stage

from ..conftest import REPO


@pytest.mark.slow
def test_baseline_on_embedded_model_is_recorded_in_mlflow(ray_session, tmp_path):
    from mlflow import MlflowClient

    from medmcqa_ray.config import load_config
    from medmcqa_ray.tracking import tracking_uri

    out = tmp_path / "out"
    overrides = [f"output_dir={out}", "eval.limit=12"]
    prep_cfg = load_config([REPO / "configs" / "local.yaml"], overrides + ["tracking.enabled=false"])
    run_stage("download", prep_cfg)
    run_stage("prep", prep_cfg)

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "medmcqa_ray.cli", "baseline", "--config", "configs/local.yaml", *overrides],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in r.stdout
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["heads"]["base"]["generate"]["n"] == summary["heads"]["base"]["loglik"]["n"] == 12
    assert (out / "eval" / "eval_results.jsonl").exists() and (out / "eval" / "accuracy.png").exists()

    cfg = load_config([REPO / "configs" / "local.yaml"], overrides)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    stage = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(stage) == 1
    assert parent[0].data.params["model.name"] == "embedded:smollm2-135m-instruct"
    assert parent[0].data.params["eval.limit"] == "12"
    metrics = stage[0].data.metrics
    for scoring in ("generate", "loglik"):
        assert metrics[f"eval/base/{scoring}/n"] == 12
        assert metrics[f"eval/base/{scoring}/accuracy"] == pytest.approx(summary["heads"]["base"][scoring]["accuracy"])
    assert metrics["eval/floor/uniform"] == 0.25 and "eval/floor/majority_letter" in metrics
    artifacts = {a.path for a in client.list_artifacts(stage[0].info.run_id, "eval")}
    assert {"eval/summary.json", "eval/accuracy.png", "eval/eval_results.jsonl"} <= artifacts
