"""What a person sees in MLflow after the CI pipeline ran against a real `mlflow server`: each training
step logged while the stage ran (not replayed after), system metrics, the adapters registered as models
with eval's `best` alias, the registered model loaded by MLflow's own loader answering a question as our
eval did, the predictions table, and the UI itself, opened in headless Chromium (Debian's package, which
.ci/run installs) with Playwright: the model-training view, the nested stage runs, a GRPO metric chart,
the registered model. Screenshots go to $MEDMCQA_SCREENSHOTS (the README's are from this test), else
to the test's folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from medmcqa_ray import metric_names as M

from .conftest import CI_SFT, REPO, sft_copy
from .test_tracking import start_mlflow_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root on a machine without a network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def tracked_pipeline(ray_session, ci_sft, tmp_path_factory):
    """The CI pipeline (sft again, grpo, eval) in one pipeline run against a live server."""
    from medmcqa_ray.config import load_config
    from medmcqa_ray.pipeline import run_stage
    from medmcqa_ray.tracking import Tracker

    folder = tmp_path_factory.mktemp("mlflow")
    uri, stop = start_mlflow_server(folder)
    cfg = load_config([REPO / "configs" / "ci.yaml"], [
        f"output_dir={sft_copy(ci_sft, folder / 'out')}", *CI_SFT, f"tracking.uri={uri}", "tracking.enabled=true",
        "tracking.system_metrics_interval_s=0.5", "eval.limit=4", "eval.max_new_tokens=8"])
    tracker = Tracker(cfg)
    manifests = {}
    with tracker.pipeline_run("all") as parent_id:
        for stage in ("sft", "grpo", "eval"):
            manifests[stage] = run_stage(stage, cfg, force=stage == "sft", tracker=tracker)
    yield cfg, uri, parent_id, manifests
    stop()


def _runs(client, cfg, parent_id):
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return experiment, {r.data.tags["medmcqa_ray.stage"]: r for r in children}


def test_steps_are_logged_live_models_registered_and_best_loads(tracked_pipeline, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    cfg, uri, parent_id, manifests = tracked_pipeline
    client = MlflowClient(tracking_uri=uri)
    experiment, stages = _runs(client, cfg, parent_id)
    assert set(stages) == {"sft", "grpo", "eval"}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # Live: every step reached the run before the learner wrote its final adapter, once each.
    for stage, metric, steps in (("sft", "sft/loss", cfg.sft.max_steps), ("grpo", f"grpo/{M.LOGPROB_ABS_DIFF}", cfg.grpo.max_steps)):
        history = client.get_metric_history(stages[stage].info.run_id, metric)
        assert [m.step for m in history] == list(range(1, steps + 1)), (stage, history)
        finished_ms = (Path(manifests[stage]["adapter"]) / "training_info.json").stat().st_mtime * 1000
        assert all(m.timestamp < finished_ms for m in history), stage
        assert manifests[stage]["logged_live"]
    assert any(k.startswith("system/cpu_utilization") for k in stages["grpo"].data.metrics), stages["grpo"].data.metrics

    # The adapters as registered models; eval moved `best` to the versions it scored.
    for head in ("sft", "grpo"):
        name = f"{cfg.tracking.experiment}-{head}"
        best = client.get_model_version_by_alias(name, "best")
        assert best.run_id == stages[head].info.run_id
        assert float(best.tags["validation_generate_accuracy"]) == manifests["eval"]["summary"]["heads"][head]["generate"]["accuracy"]

    # MLflow's own loader gives back base + GRPO adapter, which answers as our eval's grpo head did.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ URIs are looked up
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.experiment}-grpo@best")
    first = json.loads((Path(manifests["eval"]["out_dir"]) / "heads" / "grpo.jsonl").read_text().splitlines()[0])
    row = _validation_row(cfg, first["id"])
    answer = model.predict(pd.DataFrame([{"question": row["question"], "options": row["options"]}]))
    assert answer.loc[0, "completion"] == first["generation"]
    assert answer.loc[0, "answer"] == first["extracted"]


def test_eval_predictions_are_an_mlflow_table(tracked_pipeline, tmp_path):
    from mlflow import MlflowClient

    cfg, uri, parent_id, manifests = tracked_pipeline
    client = MlflowClient(tracking_uri=uri)
    _, stages = _runs(client, cfg, parent_id)
    local = client.download_artifacts(stages["eval"].info.run_id, "eval/predictions.json", str(tmp_path))
    table = json.loads(Path(local).read_text())  # MLflow's table format: columns and rows
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert len(rows) == 3 * cfg.eval.limit and {r["head"] for r in rows} == {"base", "sft", "grpo"}
    for head in ("base", "sft", "grpo"):
        records = [json.loads(line) for line in (Path(manifests["eval"]["out_dir"]) / "heads" / f"{head}.jsonl").read_text().splitlines()]
        mine = [r for r in rows if r["head"] == head]
        assert [r["generate_prediction"] for r in mine] == [r["extracted"] for r in records]
        assert [r["loglik_correct"] for r in mine] == [r["loglik_correct"] for r in records]
        assert all(r["question"] for r in mine)


def _validation_row(cfg, row_id: str) -> dict:
    from medmcqa_ray.data.formatted_rows import read_formatted
    from medmcqa_ray.layout import layout

    rows = read_formatted(layout(cfg).eval_input, columns=["id", "question", "options"]).to_pylist()
    return next(r for r in rows if r["id"] == row_id)


@pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",  # CI must run it
                    reason="needs Debian's chromium (.ci/run installs it: apt-get install chromium)")
def test_the_ui_shows_the_stage_runs_a_grpo_chart_and_the_best_model(tracked_pipeline, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from medmcqa_ray.tracking.store import run_page

    cfg, uri, parent_id, _ = tracked_pipeline
    client = MlflowClient(tracking_uri=uri)
    experiment, stages = _runs(client, cfg, parent_id)
    shots = Path(os.environ.get("MEDMCQA_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    grpo = stages["grpo"].info.run_id
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            # The experiment in the model-training view: the pipeline run, its stage runs nested under it.
            page.goto(f"{uri}/{run_page(experiment.experiment_id)}")
            expect(page.get_by_role("link", name="all", exact=True)).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Traces", exact=True).first).to_be_visible()
            page.get_by_role("button", name="Expand").first.click()  # the parent's child runs
            for stage in ("sft", "grpo", "eval"):
                expect(page.get_by_role("link", name=stage, exact=True)).to_be_visible()
            page.screenshot(path=str(shots / "experiment.png"))

            # The parent run: the pipeline's config as parameters.
            page.goto(f"{uri}/{run_page(experiment.experiment_id, parent_id)}")
            expect(page.get_by_text("model.name", exact=True)).to_be_visible(timeout=30_000)
            page.screenshot(path=str(shots / "pipeline_run.png"))

            # A GRPO run's chart of the rollout/learner logprob gap, one point per step.
            page.goto(f"{uri}/#/metric/{M.LOGPROB_ABS_DIFF}?runs=[%22{grpo}%22]&experiments=[%22{experiment.experiment_id}%22]"
                      f"&plot_metric_keys=[%22grpo/{M.LOGPROB_ABS_DIFF}%22]&plot_layout={{}}&x_axis=step")
            page.goto(f"{uri}/#/experiments/{experiment.experiment_id}/runs/{grpo}/model-metrics?workflowType=machine_learning")
            chart = page.locator(f"[data-testid*='{M.LOGPROB_ABS_DIFF}'], :text('grpo/{M.LOGPROB_ABS_DIFF}')").first
            expect(chart).to_be_visible(timeout=30_000)
            page.screenshot(path=str(shots / "grpo_metrics.png"))

            # The registered GRPO adapter with its `best` alias.
            page.goto(f"{uri}/#/models/{cfg.tracking.experiment}-grpo?workflowType=machine_learning")
            expect(page.get_by_text("Version 1")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("@ best")).to_be_visible()
            page.screenshot(path=str(shots / "registered_model.png"))
        except Exception:
            page.screenshot(path=str(shots / "failed.png"))
            (shots / "failed.txt").write_text(page.inner_text("body"))
            raise
        finally:
            browser.close()
