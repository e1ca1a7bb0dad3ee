"""MLflow tracking against real stores: a sqlite file in tmp_path, a closed port, a real server killed mid-run."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import mlflow
import pytest

from medmcqa_ray.config import load_config
from medmcqa_ray.tracking import (
    PARAM_LIMIT,
    Tracker,
    TrackingUnavailableError,
    active_run,
    replay_offline,
    ui_command,
)
from medmcqa_ray.tracking.store import run_page

SECRET = "hf_SECRET123"


@pytest.fixture(autouse=True)
def _no_ambient_store(monkeypatch, tmp_path):
    # Neither the environment's tracking URI nor the working directory may decide where runs go.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert list(cwd.iterdir()) == [], "something was written to the working directory"


def _cfg(out: Path, *overrides: str):
    return load_config([], [f"output_dir={out}", f"data.hub_token={SECRET}", *overrides])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(tracker: Tracker, report: Path) -> dict[str, str | None]:
    """Two nested stages with every kind of call; returns the run ids."""
    ids: dict[str, str | None] = {}
    with tracker.pipeline_run("all") as ids["all"]:
        with tracker.stage_run("sft") as ids["sft"]:
            for step in range(3):
                tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            tracker.log_params({"lr": 1e-4, "long": "x" * (PARAM_LIMIT + 500)})
            tracker.log_dict({"accuracy": 0.5, "n": 3}, "eval/summary.json")
            tracker.log_artifact(report, "reports")
        with tracker.stage_run("eval") as ids["eval"]:
            tracker.log_metrics({"accuracy": 0.4})
            tracker.set_tags({"head": "sft"})
    return ids


def _check_store(client: mlflow.MlflowClient, parent_id: str) -> None:
    """What `_pipeline` wrote, read back through MLflow."""
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "all"
    assert parent.data.params["data.hub_token"] == "***"
    assert parent.data.params["tracking.experiment"] == "medmcqa-ray"
    assert parent.data.tags["medmcqa_ray.data_source"] == "sample"
    assert parent.data.tags["medmcqa_ray.version"]
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"sft", "eval"}
    sft, ev = by_name["sft"], by_name["eval"]
    assert [(m.step, m.value) for m in client.get_metric_history(sft.info.run_id, "loss")] == [
        (0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert len(sft.data.params["long"]) == PARAM_LIMIT  # truncated, not refused
    assert [a.path for a in client.list_artifacts(sft.info.run_id, "eval")] == ["eval/summary.json"]
    assert [a.path for a in client.list_artifacts(sft.info.run_id, "reports")] == ["reports/report.txt"]
    summary = json.loads(Path(client.download_artifacts(sft.info.run_id, "eval/summary.json")).read_text())
    assert summary == {"accuracy": 0.5, "n": 3}
    assert ev.data.metrics == {"accuracy": 0.4} and ev.data.tags["head"] == "sft"
    for run in client.search_runs([exp]):
        assert run.info.status == "FINISHED"
        assert SECRET not in json.dumps([run.data.params, run.data.tags])


@pytest.fixture
def report(tmp_path) -> Path:
    path = tmp_path / "report.txt"
    path.write_text("a report\n")
    return path


def test_pipeline_run_with_nested_stages_in_local_store(tmp_path, report):
    out = tmp_path / "out"
    cfg = _cfg(out)
    ids = _pipeline(Tracker(cfg), report)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    _check_store(client, ids["all"])
    exp = client.get_experiment_by_name("medmcqa-ray")
    assert exp.artifact_location == (out / "mlartifacts").as_uri()
    assert (out / "mlartifacts").is_dir() and not (out / "tracking").exists()
    assert ui_command(cfg) == f"mlflow ui --backend-store-uri sqlite:///{out.resolve() / 'mlflow.db'}"

    # A stage run alone is a top-level run that carries the config; an exception marks it FAILED.
    # A call the store refuses (a param changed) is a warning, not a reason to go offline.
    tracker = Tracker(cfg)
    with pytest.raises(RuntimeError), tracker.stage_run("grpo") as run_id:
        tracker.log_params({"data.limit": 5})
        tracker.log_metrics({"reward": 0.1}, step=0)
        raise RuntimeError("boom")
    assert not tracker.offline and not (out / "tracking").exists()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["data.hub_token"] == "***" and run.data.metrics == {"reward": 0.1}


def test_ui_command_for_a_server(tmp_path):
    assert ui_command(_cfg(tmp_path, "tracking.uri=http://mlflow.example:5000")) == (
        "open http://mlflow.example:5000 in a browser (MLflow tracking server)")


def test_unreachable_server_records_offline_then_replays(tmp_path, report, caplog):
    out = tmp_path / "out"
    cfg = _cfg(out, f"tracking.uri=http://127.0.0.1:{_free_port()}")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="medmcqa_ray.tracking"):
        tracker = Tracker(cfg)
        ids = _pipeline(tracker, report)
    assert time.monotonic() - start < 10
    warnings = [r for r in caplog.records if r.name == "medmcqa_ray.tracking" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert tracker.offline and all(i and i.startswith("offline-") for i in ids.values())

    offline = out / "tracking" / "offline"
    files = sorted(offline.glob("*.jsonl"))
    assert {f.stem for f in files} == set(ids.values())
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert {"run", "name", "parent", "kind", "payload", "timestamp"} <= set(records[0])
    assert {r["parent"] for r in records if r["name"] == "sft"} == {ids["all"]}
    assert SECRET not in "".join(f.read_text() for f in files)
    report.unlink()  # the offline copy must be what gets replayed

    with pytest.raises(TrackingUnavailableError):
        replay_offline(cfg)  # the server is still down: records stay put
    target = f"sqlite:///{tmp_path / 'replay' / 'mlflow.db'}"
    assert replay_offline(cfg, target_uri=target) == len(records)
    assert not list(offline.glob("*.jsonl")) and len(list((offline / "replayed").glob("*.jsonl"))) == 3
    assert replay_offline(cfg, target_uri=target) == 0

    client = mlflow.MlflowClient(tracking_uri=target)
    exp = client.get_experiment_by_name("medmcqa-ray")
    assert exp.artifact_location == (tmp_path / "replay" / "mlartifacts").as_uri()
    (parent,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'all'")
    _check_store(client, parent.info.run_id)


def test_disabled_tracker_does_nothing(tmp_path, report):
    out = tmp_path / "out"
    for tracker in (Tracker(_cfg(out, "tracking.enabled=false")), Tracker(_cfg(out), enabled=False)):
        ids = _pipeline(tracker, report)
        assert set(ids.values()) == {None} and tracker.run_id is None
    assert not out.exists()


def start_mlflow_server(folder: Path, port: Optional[int] = None) -> tuple[str, Callable[[], None]]:
    """A real `mlflow server` on 127.0.0.1 (a free port unless given) with its store in `folder`;
    returns (uri, stop). Started again on the same folder and port, it serves the same runs."""
    port = port or _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    log_file = open(folder / "server.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts")],
        cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started: mlflow and its uvicorn child
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_file.close()

    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=1).close()
            return uri, stop
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop()
                pytest.fail("mlflow server did not start:\n" + (folder / "server.log").read_text()[-3000:])
            time.sleep(0.2)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free port; yields (uri, stop)."""
    uri, stop = start_mlflow_server(tmp_path)
    yield uri, stop
    stop()


def test_server_dying_mid_run_switches_to_offline(tmp_path, mlflow_server, caplog):
    uri, stop = mlflow_server
    cfg = _cfg(tmp_path / "out", f"tracking.uri={uri}")
    tracker = Tracker(cfg)
    with caplog.at_level(logging.WARNING, logger="medmcqa_ray.tracking"):
        with tracker.pipeline_run("all") as parent_id, tracker.stage_run("sft") as sft_id:
            tracker.log_metrics({"loss": 1.0}, step=0)
            assert not tracker.offline
            stop()
            start = time.monotonic()
            tracker.log_metrics({"loss": 0.5}, step=1)
            tracker.log_params({"lr": 0.1})
        assert time.monotonic() - start < 10
    assert tracker.offline
    assert len([r for r in caplog.records if r.name == "medmcqa_ray.tracking"]) == 1
    assert {f.stem for f in (tmp_path / "out" / "tracking" / "offline").glob("*.jsonl")} == {parent_id, sft_id}

    # The server's own store still has the live runs: replay continues them instead of making new ones.
    target = f"sqlite:///{tmp_path / 'server.db'}"
    assert replay_offline(cfg, target_uri=target) == 4  # metrics, params, two ends
    client = mlflow.MlflowClient(tracking_uri=target)
    assert [m.value for m in client.get_metric_history(sft_id, "loss")] == [1.0, 0.5]
    sft = client.get_run(sft_id)
    assert sft.data.params["lr"] == "0.1" and sft.info.status == "FINISHED"
    assert sft.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_a_learner_logging_live_into_the_stage_run_degrades_to_the_journal_and_replays(tmp_path, mlflow_server, caplog):
    """What rank 0 of a learner does (`Tracker.attached` to the stage's run, callbacks.live_metrics): its
    steps reach the open run as they happen; the server dies mid-training and the rest goes to the offline
    journal under the same run, with one warning; replay puts them in that run, after the live ones."""
    uri, stop = mlflow_server
    cfg = _cfg(tmp_path / "out", f"tracking.uri={uri}")
    driver = Tracker(cfg)
    with caplog.at_level(logging.WARNING, logger="medmcqa_ray.tracking"):
        with driver.pipeline_run("all"), driver.stage_run("sft") as sft_id:
            ref = active_run()
            assert ref.run_id == sft_id and ref.uri == uri
            learner = Tracker.attached(cfg, ref)  # in another process, from the pickled RunRef
            learner.log_metrics({"sft/loss": 2.0}, step=1)
            assert mlflow.MlflowClient(tracking_uri=uri).get_run(sft_id).data.metrics == {"sft/loss": 2.0}  # live
            stop()
            learner.log_metrics({"sft/loss": 1.5}, step=2)
        assert active_run() is None
    assert learner.offline and len([r for r in caplog.records if r.name == "medmcqa_ray.tracking"]) == 2  # each process warns once
    target = f"sqlite:///{tmp_path / 'server.db'}"  # the dead server's own store
    replay_offline(cfg, target_uri=target)
    client = mlflow.MlflowClient(tracking_uri=target)
    assert [(m.step, m.value) for m in client.get_metric_history(sft_id, "sft/loss")] == [(1, 2.0), (2, 1.5)]
    assert client.get_run(sft_id).info.status == "FINISHED"


def test_ui_address_opens_the_model_training_view(tmp_path):
    page = run_page("3", "abc")
    assert page == "#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_command(_cfg(tmp_path, "tracking.uri=http://u:pw@mlflow.example:5000/"), page) == (
        f"open http://u:***@mlflow.example:5000/{page} in a browser (MLflow tracking server)")
    assert ui_command(_cfg(tmp_path), page).endswith(f", then open http://127.0.0.1:5000/{page}")


def _tiny_adapter(folder: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from medmcqa_ray.models import load_model

    torch.manual_seed(seed)
    cfg = load_config([], ["model.name=embedded:tiny-random-smollm2"])
    model = get_peft_model(load_model(cfg.model), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False,
                                                             task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    return folder


def test_adapters_register_and_best_follows_accuracy_like_with_like_then_a_refusing_registry_costs_a_warning(tmp_path, caplog):
    import sqlite3

    from medmcqa_ray.adapters import adapter_checksum, read_adapter
    from medmcqa_ray.evaluation.eval_set import EvalSet

    cfg = _cfg(tmp_path / "out", "model.name=embedded:tiny-random-smollm2", "tracking.experiment=team/medmcqa")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    full = EvalSet(split="validation", n=344, ids_sha="a" * 12, scoring="generate", max_new_tokens=128)
    check = EvalSet(split="validation", n=12, ids_sha="b" * 12, scoring="generate", max_new_tokens=128)
    bigger = full.model_copy(update={"n": 4183, "ids_sha": "c" * 12})
    runs, shas = [], []
    # Run 1: 30% on the full set. Run 2: 25% on it (`best` stays). Run 3: 100% on a 12-question check, a set
    # of its own: not comparable, and smaller, so `best` stays. Run 4: 35% on the full set: `best` moves.
    # Run 5: 20% on a larger set than `best`'s: the larger set takes over, and run 5 is best there.
    for seed, scored, accuracy in ((0, full, 0.30), (1, full, 0.25), (2, check, 1.0), (3, full, 0.35), (4, bigger, 0.20)):
        adapter = _tiny_adapter(tmp_path / f"adapter{seed}", seed)
        shas.append(adapter_checksum(read_adapter(adapter)[1]))
        tracker = Tracker(cfg)
        with tracker.stage_run("grpo") as run_id:
            tracker.log_adapter_model("grpo", adapter)
            tracker.move_best("grpo", shas[-1], scored, accuracy, [accuracy - 0.05, accuracy + 0.05])
        runs.append(run_id)
        name = "medmcqa-grpo"  # the experiment's last path part: a registered model's name takes no '/'
        best = client.get_model_version_by_alias(name, "best")
        assert best.run_id == runs[{0: 0, 1: 0, 2: 0, 3: 3, 4: 4}[seed]], seed
        assert client.get_registered_model(name).tags["best.eval"] == (bigger if seed == 4 else full).key
    versions = {v.run_id: v for v in client.search_model_versions(f"name='{name}'")}
    assert set(versions) == set(runs)
    assert versions[runs[0]].tags[f"eval.{full.key}.accuracy"] == "0.3"
    assert versions[runs[0]].tags[f"eval.{full.key}"] == (
        "30.0% [25.0%, 35.0%], n=344: validation, 344 questions (ids aaaaaaaaaaaa), generate (128 new tokens)")
    assert f"eval.{full.key}.accuracy" not in versions[runs[2]].tags  # scored on the check only
    assert client.get_registered_model(name).tags["best.eval.set"] == bigger.describe()
    assert versions[runs[1]].tags["medmcqa_ray.adapter_sha"] == shas[1]

    # A registry that refuses (here the database itself, as a permission would): one warning with the
    # reason, and the run's model folder is logged all the same.
    with sqlite3.connect(tmp_path / "out" / "mlflow.db") as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON model_versions BEGIN SELECT RAISE(ABORT, 'registry is read-only'); END")
    tracker = Tracker(cfg)
    with caplog.at_level(logging.WARNING, logger="medmcqa_ray.tracking"):
        with tracker.stage_run("sft") as run_id:
            tracker.log_adapter_model("sft", tmp_path / "adapter0")
            tracker.log_metrics({"after": 1.0})
    warnings = [r.getMessage() for r in caplog.records if r.name == "medmcqa_ray.tracking"]
    assert len(warnings) == 1 and "refused a version of 'medmcqa-sft'" in warnings[0] and "creation error" in warnings[0], warnings
    assert not tracker.offline and client.get_run(run_id).data.metrics == {"after": 1.0}
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {"model/MLmodel", "model/artifacts"}


def test_adapters_named_in_mlflow_are_fetched_once_by_version_and_the_model_answers_a_batch(tmp_path):
    """adapters.<head> = models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH: pinned, fetched into
    output_dir/adapters/ and given to the stages as a folder; what does not exist fails naming the key."""
    import pandas as pd

    from medmcqa_ray.adapters import adapter_checksum, read_adapter
    from medmcqa_ray.errors import StageError
    from medmcqa_ray.evaluation.eval_set import EvalSet
    from medmcqa_ray.tracking.adapter_model import INPUT_EXAMPLE
    from medmcqa_ray.tracking.adapter_source import fetched_source, resolve_adapters

    out = tmp_path / "out"
    cfg = _cfg(out, "model.name=embedded:tiny-random-smollm2", "eval.max_new_tokens=6")
    scored = EvalSet(split="validation", n=20, ids_sha="a" * 12, scoring="generate", max_new_tokens=6)
    runs, shas = [], []
    for seed, accuracy in ((0, 0.5), (1, 0.25)):
        adapter = _tiny_adapter(tmp_path / f"adapter{seed}", seed)
        shas.append(adapter_checksum(read_adapter(adapter)[1]))
        tracker = Tracker(cfg)
        with tracker.stage_run("sft") as run_id:
            tracker.log_adapter_model("sft", adapter)
            tracker.move_best("sft", shas[-1], scored, accuracy, [0.0, 1.0])
        runs.append(run_id)

    def fetched(uri: str) -> Path:
        resolved = resolve_adapters(cfg.model_copy(update={"adapters": cfg.adapters.model_copy(update={"sft": uri})}))
        return Path(resolved.adapters.sft)

    best = fetched("models:/medmcqa-ray-sft@best")  # version 1: the more accurate
    assert best.parent.parent == out / "adapters" and adapter_checksum(read_adapter(best)[1]) == shas[0]
    assert fetched_source(best).resolved == "models:/medmcqa-ray-sft/1" and fetched_source(best).run_id == runs[0]
    mtime = (best / "adapter_model.safetensors").stat().st_mtime_ns
    assert fetched("models:/medmcqa-ray-sft@best") == best  # the same version: not fetched again
    assert (best / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    second = fetched("models:/medmcqa-ray-sft/2")
    assert second != best and adapter_checksum(read_adapter(second)[1]) == shas[1]
    assert adapter_checksum(read_adapter(fetched(f"runs:/{runs[1]}/model"))[1]) == shas[1]
    for uri, says in (("models:/medmcqa-ray-sft@nope", "has no alias 'nope' (aliases: ['best'])"),
                      ("models:/nobody@best", "no registered model 'nobody'"),
                      ("models:/medmcqa-ray-sft/9", "has no version 9"),
                      (f"runs:/{runs[0]}/nothing", "has no artifact 'nothing'"),
                      ("runs:/0123456789abcdef/model", "no run 0123456789abcdef"),
                      (f"runs:/{runs[0]}/model/MLmodel", "holds no PEFT adapter folders")):
        with pytest.raises(StageError, match=f"{re.escape(f'adapters.sft={uri}: ')}.*{re.escape(says)}"):
            fetched(uri)

    # The registered model states its input and output, and answers several questions in one call.
    uri = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    info = mlflow.models.get_model_info("models:/medmcqa-ray-sft@best")
    assert info.signature.inputs.input_names() == ["question", "options"]
    assert info.signature.outputs.input_names() == ["completion", "answer", "well_formatted"]
    model = mlflow.pyfunc.load_model("models:/medmcqa-ray-sft@best")
    batch = pd.concat([INPUT_EXAMPLE] * 3, ignore_index=True)
    batch.loc[1, "question"] = "Which vitamin deficiency causes rickets?"
    answers = model.predict(batch)
    assert len(answers) == 3 and list(answers.columns) == ["completion", "answer", "well_formatted"]
    assert answers.loc[0, "completion"] == answers.loc[2, "completion"]  # greedy, padding or not
    singly = model.predict(batch.iloc[[1]])
    assert singly.loc[0, "completion"] == answers.loc[1, "completion"]
