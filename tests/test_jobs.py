"""`ray job submit -- python jobs/full.py --config configs/ci.yaml` against a real local Ray head, with MLflow
on a real tracking server, run as a user runs it: from the submitted working directory, with the config's
own relative output_dir (Ray Train moves its workers elsewhere, so a path resolved late named another
folder there). Every stage runs, the runs are on the server (checked through its REST API), what the
console shows is the short story (the rest is in the log files), planted secrets appear nowhere, a
re-submitted job skips the finished stages but re-runs eval for a changed generation budget, and a bad
config key fails the job fast with the key in `ray job logs`. (`make demo` is the same jobs/full.py on a
Ray it starts itself: test_cli.py runs the CLI that way.)

What a person then sees in MLflow: each training step logged while the stage ran (not replayed after),
system metrics, the adapters registered as models with eval's `best` alias, the registered model loaded
by MLflow's own loader answering a question as our eval did, the predictions table, and the UI itself,
opened in headless Chromium (Debian's package, which .ci/run installs) with Playwright: the
model-training view, the nested stage runs, the parent run, a GRPO metric chart, the registered model.
Screenshots go to $MEDMCQA_SCREENSHOTS (the README's are from this test), else to the test's folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TINY = ["tracking.enabled=true", "sft.max_steps=2", "sft.save_steps=2", "grpo.max_steps=2", "grpo.save_steps=2",
        "eval.limit=4", "tracking.system_metrics_interval_s=0.5"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root on a machine without a network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


@contextlib.contextmanager
def serving(cmd: list[str], env: dict, health_url: str, folder: Path):
    """Run a server in its own session until the block ends; `folder` holds its state and names its
    processes, so whatever it spawned is stopped too and the folder removed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(health_url, 120, proc)
        yield
    finally:
        stop_group(proc, str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def stop_group(proc: subprocess.Popen, marker: str) -> None:
    """Stop a server started in its own session, and anything it spawned that names `marker`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)  # what is left is killed by its marker below
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):  # Ray workers may sit in other sessions
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore"):
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="module")
def env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",  # a job's `python` is the head's
               # MLflow's job runner (eight huey processes, ~50 CPU-seconds to start) serves its GenAI jobs; no
               # test here submits one.
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@dataclass(frozen=True)
class TrackingServer:
    url: str
    folder: Path  # its sqlite store and artifacts


@pytest.fixture(scope="module")
def mlflow_server(env):
    folder = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with serving(cmd, env, f"{url}/health", folder):
        yield TrackingServer(url, folder)


@dataclass(frozen=True)
class RayHead:
    address: str
    temp: Path  # its sessions and logs


@pytest.fixture(scope="module")
def ray_head(env):
    """`ray start --head` with its own temp dir and ports, beside the test session's own Ray."""
    temp = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=4", f"--temp-dir={temp}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", "--min-worker-port=21000", "--max-worker-port=21999",
           *[f"{k}={v}" for k, v in ports.items()]]
    address = f"http://127.0.0.1:{dashboard}"
    with serving(cmd, env, f"{address}/api/version", temp):
        yield RayHead(address, temp)


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


def submit(address: str, env: dict, submission_id: str, *args: str,
           entrypoint: tuple[str, ...] = ("jobs/full.py",)) -> tuple[str, str]:
    """`ray job submit -- python <entrypoint> <args>` (it waits for the job), then the job's final status and logs."""
    from ray.job_submission import JobSubmissionClient

    runtime_env = json.dumps({"env_vars": {k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}})
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission_id,
           "--working-dir", ".", "--runtime-env-json", runtime_env, "--", "python", *entrypoint, *args]
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 60
    while not client.get_job_status(submission_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    return str(client.get_job_status(submission_id)), client.get_job_logs(submission_id)


def rest(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


# Planted secrets, made here so that no source file holds them: a hub token, and a password inside the
# tracking URI (MLflow's client sends URI credentials as basic auth; a plain server ignores them). They come
# in an overlay config outside the working directory, as a user keeps secrets out of what they upload.
TOKEN, PASSWORD = f"hf_{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def secrets_overlay(mlflow_server, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "secrets.yaml"
    uri = mlflow_server.url.replace("http://", f"http://medmcqa:{PASSWORD}@")
    path.write_text(f"data:\n  hub_token: {TOKEN}\ntracking:\n  uri: {uri}\n")
    return path


def job_args(secrets: Path) -> list[str]:
    """ci.yaml keeps its relative output_dir: it lands in the job's working directory."""
    return ["--config", "configs/ci.yaml", "--config", str(secrets), *TINY]


def job_output_dir(logs: str) -> Path:
    """The absolute output_dir the job printed (paths resolve once, against the job's working directory)."""
    line = next(x for x in logs.splitlines() if x.startswith("output_dir: "))
    return Path(line.removeprefix("output_dir: "))


@pytest.fixture(scope="module")
def first_job(ray_head, env, secrets_overlay) -> tuple[str, str]:
    return submit(ray_head.address, env, "medmcqa-full-1", *job_args(secrets_overlay))


def test_submitted_job_runs_every_stage_into_a_tracking_server(ray_head, mlflow_server, env, first_job):
    from medmcqa_ray.pipeline import ALL

    status, logs = first_job
    assert status == "SUCCEEDED", logs[-3000:]
    out = job_output_dir(logs)
    assert out.name == "ci" and out.parent.name == "outputs" and out.is_absolute()
    assert (out.parents[1] / "jobs" / "full.py").is_file()  # under the submitted working directory
    for name in ALL:
        assert manifest_path(out, name).is_file(), name
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["heads"]) == {"base", "sft", "grpo"}
    assert "joined Ray cluster" in logs  # it ran on the submitted-to cluster, not a Ray of its own
    assert f"MLflow: open http://medmcqa:***@{mlflow_server.url.removeprefix('http://')}" in logs
    table = logs.split("== eval")[-1]  # the accuracy table
    assert all(head in table for head in ("base", "sft", "grpo")), table

    # What the console shows (the entrypoint's output, after Ray's own lines about starting the job): the
    # tables, one bar per long stage, where the logs are. Workers' output, Ray's and Ray Data's INFO lines
    # went to the log files instead.
    console = logs[logs.index("Running entrypoint for job"):]
    assert len(console.split("\n")) < 80, console
    for noise in ("LOAD_GLOBAL", "Disassembly", "TrainController", "RayTrainWorker", "streaming_executor",
                  "Progress bars disabled", "INFO", "core_worker.cc", "infer model signature"):
        assert noise not in console, noise
    for stage_bar in ("sft: 100%", "grpo: 100%", "eval base, sft, grpo: 100%"):
        assert stage_bar in console, stage_bar
    log_line = re.search(r"^Logs: (\S+) \(workers: (\S+)\)", console, re.M)
    assert log_line, logs[-3000:]
    log_file, ray_worker_logs = Path(log_line[1]), Path(log_line[2])
    assert log_file.parent == out / "logs"
    logged = log_file.read_text()
    assert "download: done" in logged and "streaming_executor" in logged
    # Ray's C++ warning about Ray Data's pool actors (evaluation/heads.py says why it is let be): in the log.
    # Should a Ray upgrade stop writing it, heads.py can drop first_with_native_stderr_to_log.
    assert "has constructor arguments in the object store" in logged
    # Ray Data's DataContext, some kilobytes per dataset, in no log file: ours, nor Ray Data's own.
    ray_data_logs = list((ray_worker_logs / "ray-data").glob("*.log"))
    assert any(p.name == "ray-data.log" for p in ray_data_logs)
    for path in [log_file, *ray_data_logs]:
        assert "Data Context for dataset" not in path.read_text(errors="replace"), path

    # The tracking server holds the pipeline's parent run, a nested run per stage, metrics and artifacts.
    url = mlflow_server.url
    experiment = rest(url, "experiments/get-by-name?experiment_name=medmcqa-ray")["experiment"]["experiment_id"]
    runs = rest(url, "runs/search", {"experiment_ids": [experiment], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("medmcqa_ray.kind") == "pipeline"]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    stages = {t["medmcqa_ray.stage"]: r for r, t in zip(runs, tags)
              if t.get("medmcqa_ray.kind") == "stage" and t.get("mlflow.parentRunId") == parent_id}
    assert set(stages) == set(ALL)
    params = {p["key"]: p["value"] for p in parents[0]["data"]["params"]}
    assert {"model.name", "grpo.max_steps", "rewards.weights.correct"} <= set(params)
    assert params["data.hub_token"] == "***" and params["eval.max_new_tokens"] == "16"
    grpo_id = stages["grpo"]["info"]["run_id"]
    history = rest(url, f"metrics/get-history?run_id={grpo_id}&metric_key=grpo/rewards/correct/mean")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]
    eval_metrics = {m["key"] for m in stages["eval"]["data"]["metrics"]}
    assert {f"eval/{head}/{scoring}/accuracy" for head in ("base", "sft", "grpo") for scoring in ("generate", "loglik")} \
        <= eval_metrics
    files = rest(url, f"artifacts/list?run_id={stages['eval']['info']['run_id']}&path=eval")["files"]
    assert {"eval/summary.json", "eval/accuracy.png", "eval/eval_results.jsonl"} <= {f["path"] for f in files}

    # Neither secret reached the job's logs, its output_dir, the tracking server's store or Ray's logs.
    ray_logs = list(ray_head.temp.glob("session_*/logs"))
    assert ray_logs
    for secret in (TOKEN, PASSWORD):
        assert secret not in logs
        assert files_holding(secret, out, mlflow_server.folder, *ray_logs) == [], secret


def _first_pipeline(url: str, logs: str):
    """The first job's config (as the job resolved it), experiment, parent run id and stage runs."""
    from mlflow import MlflowClient

    from medmcqa_ray.config import load_config

    out = job_output_dir(logs)
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *TINY])
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    parent = client.search_runs([experiment.experiment_id], "tags.`medmcqa_ray.kind` = 'pipeline'",
                                order_by=["start_time ASC"])[0]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return cfg, client, experiment, parent.info.run_id, {r.data.tags["medmcqa_ray.stage"]: r for r in children}


def test_steps_logged_live_adapters_registered_best_loads_and_predictions_table(mlflow_server, first_job, monkeypatch, tmp_path):
    import mlflow
    import pandas as pd

    from medmcqa_ray import metric_names as M
    from medmcqa_ray.data.formatted_rows import read_formatted
    from medmcqa_ray.evaluation.eval_set import eval_set
    from medmcqa_ray.layout import layout

    status, logs = first_job
    assert status == "SUCCEEDED", logs[-3000:]
    cfg, client, experiment, _, stages = _first_pipeline(mlflow_server.url, logs)
    out = job_output_dir(logs)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # Live: every step reached the run before the learner wrote its final adapter, once each.
    for stage, metric in (("sft", "sft/loss"), ("grpo", f"grpo/{M.LOGPROB_ABS_DIFF}")):
        history = client.get_metric_history(stages[stage].info.run_id, metric)
        assert [m.step for m in history] == [1, 2], (stage, history)
        finished_ms = (out / "checkpoints" / stage / "training_info.json").stat().st_mtime * 1000
        assert all(m.timestamp < finished_ms for m in history), stage
        assert any(k.startswith("system/cpu_utilization") for k in stages[stage].data.metrics), stages[stage].data.metrics

    # The adapters as registered models; eval moved `best` to the versions it scored.
    summary = json.loads((out / "eval" / "summary.json").read_text())
    for head in ("sft", "grpo"):
        best = client.get_model_version_by_alias(f"{cfg.tracking.experiment}-{head}", "best")
        assert best.run_id == stages[head].info.run_id
        scored = eval_set(cfg, out / "eval", head, "generate")  # what the accuracy was measured on
        assert scored.split == "validation" and scored.n == summary["heads"][head]["generate"]["n"]
        assert float(best.tags[f"eval.{scored.key}.accuracy"]) == summary["heads"][head]["generate"]["accuracy"]
        assert f"n={scored.n}: validation, {scored.n} questions" in best.tags[f"eval.{scored.key}"]

    # MLflow's own loader gives back base + GRPO adapter, which answers as our eval's grpo head did.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # where models:/ URIs are looked up
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.experiment}-grpo@best")
    records = {h: [json.loads(x) for x in (out / "eval" / "heads" / f"{h}.jsonl").read_text().splitlines()]
               for h in ("base", "sft", "grpo")}
    first = records["grpo"][0]
    row = next(r for r in read_formatted(layout(cfg).eval_input, columns=["id", "question", "options"]).to_pylist()
               if r["id"] == first["id"])
    answer = model.predict(pd.DataFrame([{"question": row["question"], "options": row["options"]}]))
    assert answer.loc[0, "completion"] == first["generation"] and answer.loc[0, "answer"] == first["extracted"]

    # The eval run's per-question predictions, an MLflow table: a row per head and question.
    local = client.download_artifacts(stages["eval"].info.run_id, "eval/predictions.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    for head, recs in records.items():
        mine = [r for r in rows if r["head"] == head]
        assert [r["generate_prediction"] for r in mine] == [r["extracted"] for r in recs]
        assert [r["loglik_correct"] for r in mine] == [r["loglik_correct"] for r in recs]
        assert all(r["question"] for r in mine)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it: apt-get install chromium)")
def test_the_ui_shows_the_stage_runs_a_grpo_chart_and_the_best_model(mlflow_server, first_job, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from medmcqa_ray import metric_names as M
    from medmcqa_ray.tracking.store import run_page

    status, logs = first_job
    assert status == "SUCCEEDED", logs[-3000:]
    uri = mlflow_server.url
    cfg, _, experiment, parent_id, stages = _first_pipeline(uri, logs)
    shots = Path(os.environ.get("MEDMCQA_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    grpo = stages["grpo"].info.run_id
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            # The experiment in the model-training view: the pipeline run, its stage runs nested under it.
            page.goto(f"{uri}/{run_page(experiment.experiment_id)}")
            expect(page.get_by_role("link", name="all", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Model registry", exact=True)).to_be_visible()  # the training view's sidebar
            page.get_by_role("button", name="Close").click()  # the assistant panel, for the screenshots
            parent = page.locator("[role=row]", has=page.get_by_role("link", name="all", exact=True)).first
            parent.locator("button[data-component-id*='runnamecellrenderer']").click()  # expand: its children
            for stage in ("sft", "grpo", "eval"):
                expect(page.get_by_role("link", name=stage, exact=True)).to_be_visible()
            page.screenshot(path=str(shots / "mlflow-experiment.png"))

            # The parent run: the pipeline's resolved config as its parameters.
            page.goto(f"{uri}/{run_page(experiment.experiment_id, parent_id)}")
            expect(page.get_by_text("model.name", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("embedded:tiny-random-smollm2", exact=True)).to_be_visible()

            # A GRPO run's chart of the rollout/learner logprob gap: one point per step.
            page.goto(f"{uri}/#/experiments/{experiment.experiment_id}/runs/{grpo}/model-metrics?workflowType=machine_learning")
            page.get_by_placeholder("Search metric charts").fill("logprob_abs_diff")
            expect(page.get_by_text(f"grpo/{M.LOGPROB_ABS_DIFF}", exact=False)).to_be_visible(timeout=60_000)
            expect(page.locator(".scatterlayer .point")).to_have_count(cfg.grpo.max_steps)
            page.screenshot(path=str(shots / "mlflow-grpo-metrics.png"))

            # The registered GRPO adapter with its `best` alias.
            page.goto(f"{uri}/#/models/{cfg.tracking.experiment}-grpo?workflowType=machine_learning")
            expect(page.get_by_text("Version 1", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("@ best")).to_be_visible()
            page.screenshot(path=str(shots / "mlflow-registered-model.png"))
        except Exception:
            page.screenshot(path=str(shots / "failed.png"))
            (shots / "failed.txt").write_text(page.inner_text("body"))
            raise
        finally:
            browser.close()


def manifest_path(out: Path, stage: str) -> Path:
    from medmcqa_ray.config import load_config
    from medmcqa_ray.pipeline import STAGES

    return STAGES[stage].manifest_path(load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}"]))


def test_resubmitted_job_skips_finished_stages_and_reruns_eval_for_a_new_budget(ray_head, env, first_job, secrets_overlay):
    """A changed generation budget re-runs eval (its cache key hashes the real value); the rest is up to date."""
    status, logs = first_job
    if status != "SUCCEEDED":
        pytest.skip("needs the first job's outputs")
    out = job_output_dir(logs)
    trained = ("download", "prep", "sft", "grpo")
    before = {name: manifest_path(out, name).stat().st_mtime_ns for name in (*trained, "eval")}
    status, logs = submit(ray_head.address, env, "medmcqa-full-2", *job_args(secrets_overlay), "eval.max_new_tokens=17")
    assert status == "SUCCEEDED", logs[-3000:]
    assert job_output_dir(logs) == out  # the same working directory: Ray keeps one per uploaded package
    assert all(f"== {name} (skipped: up to date)" in logs for name in trained), logs[-3000:]
    assert {name: manifest_path(out, name).stat().st_mtime_ns for name in trained} == {n: before[n] for n in trained}
    assert "== eval\n" in logs and "== eval (skipped" not in logs
    assert manifest_path(out, "eval").stat().st_mtime_ns > before["eval"]


def test_a_grpo_job_continues_the_best_registered_sft_head(ray_head, mlflow_server, env, first_job, secrets_overlay):
    """`medmcqa-ray grpo ... adapters.sft=models:/<experiment>-sft@best` submitted: the job pins the alias to its
    version, fetches that adapter from the tracking server, and GRPO continues it (it runs again, since its
    SFT adapter is another folder now)."""
    from medmcqa_ray.adapters import adapter_checksum, read_adapter
    from medmcqa_ray.tracking.store import registered_model_name

    status, logs = first_job
    if status != "SUCCEEDED":
        pytest.skip("needs the first job's registered SFT head")
    cfg, client, _, _, _ = _first_pipeline(mlflow_server.url, logs)
    name = registered_model_name(cfg, "sft")
    best = client.get_model_version_by_alias(name, "best")
    status, logs = submit(ray_head.address, env, "medmcqa-from-registry", *job_args(secrets_overlay),
                          f"adapters.sft=models:/{name}@best", entrypoint=("-m", "medmcqa_ray.cli", "grpo"))
    assert status == "SUCCEEDED", logs[-3000:]
    assert f"adapters.sft: models:/{name}@best is models:/{name}/{best.version}, in " in logs
    assert "== grpo\n" in logs and "== grpo (skipped" not in logs
    grpo = json.loads(manifest_path(job_output_dir(logs), "grpo").read_text())
    continued = Path(grpo["init_adapter"])
    assert continued.parent.parent == job_output_dir(logs) / "adapters"
    assert adapter_checksum(read_adapter(continued)[1]) == best.tags["medmcqa_ray.adapter_sha"]
    assert grpo["init_adapter_source"] == f"models:/{name}@best = models:/{name}/{best.version}"


def test_bad_config_key_fails_the_job_fast_naming_it(ray_head, env, tmp_path):
    start = time.monotonic()
    status, logs = submit(ray_head.address, env, "medmcqa-bad-key", "--config", "configs/ci.yaml", f"output_dir={tmp_path}",
                          "grpo.max_stepz=3")
    assert status == "FAILED"
    assert "grpo.max_stepz" in logs and "unknown key" in logs
    assert time.monotonic() - start < 120
    assert not (tmp_path / "data").exists()  # no work started
