"""Where tracking records go and how one reaches the store: the tracking URI, the `mlflow ui` hint, the
server probe, the MLflow client with our retry settings, and `send`, which live calls and replay share."""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

from medmcqa_ray.config import Config
from medmcqa_ray.errors import MedmcqaError
from medmcqa_ray.layout import layout
from medmcqa_ray.redaction import redact_uri
from medmcqa_ray.tracking.calls import (EndRun, LogArtifact, LogDict, LogMetrics, LogModel, LogParams, LogTable,
                                        MoveBest, SetTags, TrackingCall)

# MLflow's MAX_PARAM_VAL_LENGTH / MAX_TAG_VAL_LENGTH / MAX_PARAMS_TAGS_PER_BATCH; copied so a no-op
# tracker never imports mlflow (about a second).
PARAM_LIMIT, TAG_LIMIT, BATCH = 6000, 8000, 100
OFFLINE_PREFIX = "offline-"
BEST_ALIAS = "best"
EVAL_TAG = "eval"
"""Model version tags `eval.<set>.accuracy` and `eval.<set>` (the figure, its interval, n and the set)."""
# The tag a registered version carries: which adapter it is, so that eval finds the version of the adapter
# it scored (adapters.adapter_checksum over the adapter's tensors).
ADAPTER_SHA_TAG = "medmcqa_ray.adapter_sha"
# MLflow's record that the experiment holds model training, not GenAI work. MLflow 3.17's UI still opens
# every experiment in its GenAI view unless the address asks for the other (run_page).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
REGISTERED_MODEL_DESCRIPTION = ("A medmcqa-ray LoRA adapter over its base model (an MLflow pyfunc: question and options "
                                "in, the completion and its answer letter out). Alias `best`: the version with the "
                                "highest accuracy on the evaluation set its tags name (`best.eval.set`), "
                                "ranked only among versions scored on that same set.")
# MLflow's defaults (7 retries, exponential backoff) make a dead server cost minutes per call; set only
# around our own calls, and never over what the user exported.
# MLflow also prints each run's URL when it ends: the URI's credentials included, and one more console line;
# our own `MLflow:` line gives the redacted address once.
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}



class TrackingUnavailableError(MedmcqaError):
    """The tracking store cannot be reached (replaying offline records needs it)."""



class RegistrationRefused(MedmcqaError):
    """The model registry refused a registration or an alias (a store without a registry, a permission):
    reported, never a reason to go offline."""


def registered_model_name(cfg: Config, head: str) -> str:
    """One registered model per head kind: <experiment>-sft, <experiment>-grpo, after the experiment
    name's last part (MLflow's model names take no '/' or ':'; Databricks experiments are paths)."""
    return f"{cfg.tracking.experiment.rstrip('/').rsplit('/', 1)[-1].replace(':', '-')}-{head}"


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{layout(cfg).mlflow_db}"


def run_page(experiment_id: str, run_id: Optional[str] = None) -> str:
    """The UI's address of a run (or of the experiment) in its model-training view. MLflow 3's UI opens
    every experiment in its GenAI view unless the address asks (the experimentKind tag is not enough)."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + "?workflowType=machine_learning"


def ui_command(cfg: Config, page: str = "") -> str:
    """How to browse the runs: the `mlflow ui` command for a local store, the URL for a server; with
    `page` (run_page's), the address to open."""
    uri = redact_uri(tracking_uri(cfg))
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/') + '/' + page if page else uri} in a browser (MLflow tracking server)"
    command = f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
    return f"{command}, then open http://127.0.0.1:5000/{page}" if page else command



def offline_dir(cfg: Config) -> Path:
    return layout(cfg).offline_tracking


def reachable(uri: str, timeout: float = 3.0) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True  # local stores have nothing to wait for; they fail on first use instead
    # urllib reads "user:pw@host" as the host; send the credentials as the header MLflow's client sends.
    parts = urllib.parse.urlsplit(uri)
    if parts.hostname is None:  # "http://:5000": nothing to connect to, and no host to build the probe on
        raise ValueError(f"tracking.uri (or MLFLOW_TRACKING_URI): {redact_uri(uri)} names no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6 keeps its brackets
    request = urllib.request.Request(parts._replace(netloc=host + (f":{parts.port}" if parts.port else ""),
                                                    path=parts.path.rstrip("/") + "/health").geturl())
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered (auth, a proxy, an older server): alive
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def client_env() -> Iterator[None]:
    added = {k: v for k, v in _CLIENT_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def keep_client_env() -> None:
    """Our client settings for the rest of this process (a learner's, where MLflow's system metrics
    thread calls the store at any time), under what the user exported."""
    for k, v in _CLIENT_ENV.items():
        os.environ.setdefault(k, v)


def experiment_id(client: Any, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND[0] not in exp.tags:  # made by an older version, or by hand
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # A sqlite store's default artifact root is ./mlruns of whatever the cwd is; keep them beside the db.
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # another process created it between our two calls
        return client.get_experiment_by_name(name).experiment_id


def make_client(uri: str) -> Any:
    import mlflow

    from medmcqa_ray import console

    console.quiet_libraries()  # mlflow's logger, set up by that import, says INFO on its own handler

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).resolve().parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)



def send(client: Any, run_id: str, call: TrackingCall) -> None:
    """One call to the store: the same code serves live calls and `replay_offline`."""
    from mlflow.entities import Metric, Param, RunTag

    if isinstance(call, LogMetrics):
        client.log_batch(run_id, metrics=[Metric(k, v, call.ts, call.step or 0) for k, v in call.metrics.items()])
    elif isinstance(call, LogParams):
        params = [Param(k, v) for k, v in call.params.items()]
        for i in range(0, len(params), BATCH):
            client.log_batch(run_id, params=params[i : i + BATCH])
    elif isinstance(call, SetTags):
        tags = [RunTag(k, v) for k, v in call.tags.items()]
        for i in range(0, len(tags), BATCH):
            client.log_batch(run_id, tags=tags[i : i + BATCH])
    elif isinstance(call, LogDict):
        client.log_dict(run_id, call.obj, call.name)
    elif isinstance(call, LogArtifact):
        upload = client.log_artifacts if Path(call.path).is_dir() else client.log_artifact
        upload(run_id, call.path, call.artifact_path)
    elif isinstance(call, LogTable):
        client.log_table(run_id, call.data, call.artifact_file)
    elif isinstance(call, LogModel):
        client.log_artifacts(run_id, call.path, call.artifact_path)
        try:
            register(client, run_id, call.artifact_path, call.name, call.tags)
        except Exception as e:
            raise RegistrationRefused(f"the model registry refused a version of {call.name!r} "
                                      f"({type(e).__name__}: {e})") from e
    elif isinstance(call, MoveBest):
        try:
            move_best(client, call.name, call.adapter_sha, call.set_key, call.set_n, call.set_text, call.accuracy,
                      call.ci95)
        except Exception as e:
            raise RegistrationRefused(f"moving alias {BEST_ALIAS!r} of {call.name!r} failed ({type(e).__name__}: {e})") from e
    elif isinstance(call, EndRun):
        client.set_terminated(run_id, call.status, call.end_time)
    else:  # StartRun: the run is created before its calls (Tracker._start, replay's resolve)
        raise TypeError(f"tracking: {call.kind} is not sent as a call")


def register(client: Any, run_id: str, artifact_path: str, name: str, tags: dict[str, str]) -> Any:
    """A new version of registered model `name` from the run's model folder (the model created on first use)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    return client.create_model_version(name, source, run_id=run_id, tags=tags)


def move_best(client: Any, name: str, adapter_sha: str, set_key: str, set_n: int, set_text: str, accuracy: float,
              ci95: list[float]) -> None:
    """Tag the version of `name` holding this adapter with its accuracy on evaluation set `set_key`
    (evaluation/eval_set.py), then point alias `best` at the version most accurate on that set (ties: the
    newer). Only like with like: versions scored on other sets are not ranked, and `best` leaves a version
    chosen on another set only for a set at least as large (a 12-question check never takes it from a
    4,183-question evaluation). The registered model's tags say which set `best` was chosen on."""
    versions = client.search_model_versions(f"name='{name}'")
    mine = [v for v in versions if v.tags.get(ADAPTER_SHA_TAG) == adapter_sha]
    if not mine:
        raise LookupError(f"registered model {name!r} has no version of adapter {adapter_sha}")
    metric = f"{EVAL_TAG}.{set_key}.accuracy"
    for v in mine:  # the model version page: the figure with its interval and n, and what it was measured on
        client.set_model_version_tag(name, v.version, metric, str(accuracy))
        client.set_model_version_tag(name, v.version, f"{EVAL_TAG}.{set_key}",
                                     f"{accuracy:.1%} [{ci95[0]:.1%}, {ci95[1]:.1%}], n={set_n}: {set_text}")
        v.tags[metric] = str(accuracy)
    tags = client.get_registered_model(name).tags
    held = tags.get(f"{BEST_ALIAS}.{EVAL_TAG}")
    if held and held != set_key and int(tags.get(f"{BEST_ALIAS}.{EVAL_TAG}.n", 0)) > set_n:
        return
    scored = [v for v in versions if metric in v.tags]
    best = max(scored, key=lambda v: (float(v.tags[metric]), int(v.version)))
    client.set_registered_model_alias(name, BEST_ALIAS, best.version)
    for key, value in ((f"{BEST_ALIAS}.{EVAL_TAG}", set_key), (f"{BEST_ALIAS}.{EVAL_TAG}.n", str(set_n)),
                       (f"{BEST_ALIAS}.{EVAL_TAG}.set", set_text)):
        client.set_registered_model_tag(name, key, value)


def refused(e: Exception) -> bool:
    """The store answered and said no (a bad key, a changed param): not a reason to go offline."""
    code = getattr(e, "get_http_status_code", lambda: 500)()
    return 400 <= code < 500

