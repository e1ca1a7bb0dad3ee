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
from typing import Any, Iterator

from medmcqa_ray.config import Config
from medmcqa_ray.errors import MedmcqaError
from medmcqa_ray.layout import layout
from medmcqa_ray.redaction import redact_uri

# MLflow's MAX_PARAM_VAL_LENGTH / MAX_TAG_VAL_LENGTH / MAX_PARAMS_TAGS_PER_BATCH; copied so a no-op
# tracker never imports mlflow (about a second).
PARAM_LIMIT, TAG_LIMIT, BATCH = 6000, 8000, 100
OFFLINE_PREFIX = "offline-"
# MLflow's defaults (7 retries, exponential backoff) make a dead server cost minutes per call; set only
# around our own calls, and never over what the user exported.
# MLflow also prints each run's URL when it ends: the URI's credentials included, and one more console line;
# our own `MLflow:` line gives the redacted address once.
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}



class TrackingUnavailableError(MedmcqaError):
    """The tracking store cannot be reached (replaying offline records needs it)."""



def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{layout(cfg).mlflow_db}"


def ui_command(cfg: Config) -> str:
    """How to browse the runs: the `mlflow ui` command for a local store, the URL for a server."""
    uri = redact_uri(tracking_uri(cfg))
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (MLflow tracking server)"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"



def offline_dir(cfg: Config) -> Path:
    return layout(cfg).offline_tracking


def reachable(uri: str, timeout: float = 3.0) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True  # local stores have nothing to wait for; they fail on first use instead
    # urllib reads "user:pw@host" as the host; send the credentials as the header MLflow's client sends.
    parts = urllib.parse.urlsplit(uri)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname  # IPv6 keeps its brackets
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


def experiment_id(client: Any, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # A sqlite store's default artifact root is ./mlruns of whatever the cwd is; keep them beside the db.
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between our two calls
        return client.get_experiment_by_name(name).experiment_id


def make_client(uri: str) -> Any:
    import mlflow

    from medmcqa_ray import console

    console.quiet_libraries()  # mlflow's logger, set up by that import, says INFO on its own handler

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).resolve().parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)



def send(client: Any, run_id: str, kind: str, p: dict) -> None:
    """One record to the store: the same code serves live calls and `replay_offline`."""
    from mlflow.entities import Metric, Param, RunTag

    if kind == "metrics":
        items = [Metric(k, v, p["ts"], p["step"] or 0) for k, v in p["metrics"].items()]
        client.log_batch(run_id, metrics=items)
    elif kind in ("params", "tags"):
        entity = Param if kind == "params" else RunTag
        items = [entity(k, v) for k, v in p[kind].items()]
        for i in range(0, len(items), BATCH):
            client.log_batch(run_id, **{kind: items[i : i + BATCH]})
    elif kind == "dict":
        client.log_dict(run_id, p["obj"], p["name"])
    elif kind == "artifact":
        upload = client.log_artifacts if Path(p["path"]).is_dir() else client.log_artifact
        upload(run_id, p["path"], p["artifact_path"])
    elif kind == "end":
        client.set_terminated(run_id, p["status"], p["end_time"])


def refused(e: Exception) -> bool:
    """The store answered and said no (a bad key, a changed param): not a reason to go offline."""
    code = getattr(e, "get_http_status_code", lambda: 500)()
    return 400 <= code < 500

