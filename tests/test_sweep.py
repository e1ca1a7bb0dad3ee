"""Ray Tune sweep of reward weights: trials are GRPO runs on Ray Train, each an MLflow run nested under
the sweep's, and best.yaml is a config overlay. On the tiny model in CI; in the extended tier, on
SmolLM2 learning the toy rule: ASHA stops the trial that trails, and a sweep killed after its first
trial is restored without running that trial again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CI_SFT, REPO, sft_copy

pytestmark = pytest.mark.slow


def test_sweep_runs_its_trials_as_nested_runs_and_writes_best_yaml(ci_sft, tmp_path):
    """Two trials (correct weighted 1 and -1) of 2 GRPO steps on the tiny model, FIFO, in this process."""
    from mlflow import MlflowClient

    from medmcqa_ray.config import load_config
    from medmcqa_ray.pipeline import run_stage
    from medmcqa_ray.tracking import tracking_uri

    cfg = load_config([REPO / "configs" / "ci.yaml"], [
        f"output_dir={sft_copy(ci_sft, tmp_path / 'out')}", *CI_SFT, "grpo.max_steps=2", "grpo.save_steps=2",
        "grpo.max_completion_length=8", "sweep.name=tiny", "sweep.space={correct: {grid: [1.0, -1.0]}}",
        "sweep.scheduler=fifo", "sweep.eval_rows=4", "sweep.eval_every=1", "tracking.enabled=true"])
    m = run_stage("sweep", cfg)
    trials = {t.weights["correct"]: t for t in m.trials}
    assert set(trials) == {1.0, -1.0} and all(t.status == "completed" and t.last_step == 2 for t in trials.values())
    assert all([s for s, _ in t.curves["selection_accuracy"]] == [1, 2] for t in trials.values())
    # Ranked on the selection split (carved from train), never on validation, and the table says so.
    assert "on 4 questions of the selection split" in m.ranked_on and m.ranked_on in m.table()
    best = load_config([REPO / "configs" / "ci.yaml", Path(m.best_yaml)])
    assert best.rewards.weights["correct"] == m.best.weights["correct"]

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    sweep_run = next(r for r in runs if r.data.tags.get("medmcqa_ray.stage") == "sweep")
    trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_run.info.run_id]
    assert {r.data.params["weight.correct"] for r in trial_runs} == {"1.0", "-1.0"}
    assert all(len(client.get_metric_history(r.info.run_id, "rewards/correct/mean")) == 2 for r in trial_runs)


@pytest.mark.extended
def test_sweep_stops_the_trailing_trial_writes_best_yaml_and_resumes(toy_sft):
    """SmolLM2 after a short SFT on the toy split, then two trials on the always-C split: `correct`
    weighted +2 (GRPO learns to answer C) and -2 (it learns not to). ASHA stops the second at its
    first rung; the sweep process is killed once the first trial is done and run again."""
    from mlflow import MlflowClient

    from medmcqa_ray.config import load_config
    from medmcqa_ray.tracking import tracking_uri

    out, toy = toy_sft  # its download, prep and sft are done: the sweep job skips them
    overrides = [f"output_dir={out}", *toy, "ray.num_cpus=6", "grpo.max_steps=4", "grpo.save_steps=2",
                 "sweep.name=toy", "sweep.space={correct: {grid: [2.0, -2.0]}}", "sweep.metric=correct",
                 "sweep.grace_period=3", "sweep.eval_rows=4", "sweep.eval_every=2", "tracking.enabled=true"]
    cfg = load_config([REPO / "configs" / "ci.yaml"], overrides)

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "jobs/sweep.py", "--config", "configs/ci.yaml", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trials = out / "sweeps" / "toy" / "trials"

    def recorded_finished() -> bool:  # Tune's saved experiment state holds a finished trial
        return any("TERMINATED" in f.read_text(errors="ignore") for f in (out / "sweeps" / "toy" / "tune").rglob("experiment_state*.json"))

    deadline = time.monotonic() + 600
    while not recorded_finished() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    first = list(trials.glob("*/adapter/training_info.json"))
    assert recorded_finished() and len(first) == 1, "the first trial did not finish"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_at = first[0].stat().st_mtime_ns

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "restoring the interrupted sweep" in r.stderr
    assert first[0].stat().st_mtime_ns == finished_at  # the finished trial was not run again
    manifest = json.loads((out / "sweeps" / "toy" / "manifest.json").read_text())
    by_weight = {t["weights"]["correct"]: t for t in manifest["trials"]}
    assert set(by_weight) == {2.0, -2.0}
    assert by_weight[2.0]["status"] == "completed" and by_weight[2.0]["last_step"] == 4
    assert by_weight[-2.0]["status"] == "early_stopped" and by_weight[-2.0]["last_step"] < 4, by_weight[-2.0]
    assert manifest["best"]["weights"] == {"correct": 2.0}
    assert [s for s, _ in by_weight[2.0]["curves"]["selection_accuracy"]] == [1, 2, 4]  # step 1, then every 2

    best = load_config([REPO / "configs" / "ci.yaml", Path(manifest["best_yaml"])])
    assert best.rewards.weights["correct"] == 2.0 and best.rewards.weights["similarity"] == cfg.rewards.weights["similarity"]

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    runs = client.search_runs([experiment], order_by=["start_time DESC"])  # the finished run's before the killed one's
    sweep_run = next(r for r in runs if r.data.tags.get("medmcqa_ray.stage") == "sweep")
    trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_run.info.run_id]
    assert {r.data.params["weight.correct"] for r in trial_runs} == {"2.0", "-2.0"}
    stopped = {r.data.params["weight.correct"]: r.data.tags["medmcqa_ray.early_stopped"] for r in trial_runs}
    assert stopped == {"2.0": "false", "-2.0": "true"}
    for run in trial_runs:
        curve = client.get_metric_history(run.info.run_id, "rewards/correct/mean")
        assert len(curve) == 4 if run.data.params["weight.correct"] == "2.0" else len(curve) < 4
    assert sweep_run.data.params["best.weight.correct"] == "2.0"
