"""MLflow tracking: one parent run per pipeline invocation, one nested run per stage.

Layout. `Tracker.pipeline_run("all")` opens the parent run: params are the flattened resolved config
(secrets already `***`), tags the package version and `data.source`. Each `Tracker.stage_run("sft")`
inside it opens a child run (tag `mlflow.parentRunId`) that holds the stage's metrics, params and
artifacts; a stage run with no parent open is a top-level run and carries the config params itself.

Store. `tracking.uri`, else MLFLOW_TRACKING_URI, else an embedded sqlite store `<output_dir>/mlflow.db`
with artifacts in `<output_dir>/mlartifacts`. Browse it with the command `ui_command(cfg)` returns, e.g.
`mlflow ui --backend-store-uri sqlite:////abs/outputs/local/mlflow.db`, then open http://127.0.0.1:5000.

Offline. A tracking server that is unreachable at the start, or dies mid-run, costs one warning: the
work goes on and every call is appended to `<output_dir>/tracking/offline/<run>.jsonl`;
`replay_offline(cfg)` sends those records later. Build an enabled Tracker on rank 0 only; other ranks
get `Tracker(cfg, enabled=False)`, which has the same methods and does nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from medmcqa_ray import __version__
from medmcqa_ray.config import Config, flatten, resolved_dict
from medmcqa_ray.errors import MedmcqaError
from medmcqa_ray.redaction import redact_uri

log = logging.getLogger(__name__)

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
    return f"sqlite:///{Path(cfg.output_dir) / 'mlflow.db'}"


def ui_command(cfg: Config) -> str:
    """How to browse the runs: the `mlflow ui` command for a local store, the URL for a server."""
    uri = redact_uri(tracking_uri(cfg))
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (MLflow tracking server)"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def offline_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "tracking" / "offline"


def _reachable(uri: str, timeout: float = 3.0) -> bool:
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
def _client_env() -> Iterator[None]:
    added = {k: v for k, v in _CLIENT_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _experiment(client: Any, uri: str, name: str) -> str:
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


def _client(uri: str) -> Any:
    import mlflow

    from medmcqa_ray import console

    console.quiet_libraries()  # mlflow's logger, set up by that import, says INFO on its own handler

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).resolve().parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)


def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _send(client: Any, run_id: str, kind: str, p: dict) -> None:
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


def _refused(e: Exception) -> bool:
    """The store answered and said no (a bad key, a changed param): not a reason to go offline."""
    code = getattr(e, "get_http_status_code", lambda: 500)()
    return 400 <= code < 500


@dataclass
class _Run:
    key: str  # the MLflow run id, or offline-<hex> for a run the store never saw
    name: str
    parent: Optional[str]


class Tracker:
    """Runs and logging for one process (rank 0); disabled, every method is a no-op. Not thread-safe."""

    def __init__(self, cfg: Config, enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled and cfg.tracking.enabled
        self.uri = tracking_uri(cfg)
        self.offline = False
        self._client: Any = None
        self._experiment_id = ""
        self._stack: list[_Run] = []

    @property
    def run_id(self) -> Optional[str]:
        """The innermost open run's id (offline-<hex> when offline), None when none is open."""
        return self._stack[-1].key if self._stack else None

    def pipeline_run(self, name: str = "pipeline") -> contextlib.AbstractContextManager[Optional[str]]:
        return self._run(name, {"medmcqa_ray.kind": "pipeline"})

    def stage_run(self, stage: str) -> contextlib.AbstractContextManager[Optional[str]]:
        return self._run(stage, {"medmcqa_ray.kind": "stage", "medmcqa_ray.stage": stage})

    def nested_run(self, name: str, tags: dict[str, str]) -> contextlib.AbstractContextManager[Optional[str]]:
        """A run nested under the open one (a sweep's trial under the sweep stage's run)."""
        return self._run(name, tags)

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        if not self.enabled:  # other ranks pay nothing, not even the float() of a tensor
            return
        values = {str(k): float(v) for k, v in metrics.items()}
        self._record("metrics", {"metrics": values, "step": step, "ts": int(time.time() * 1000)})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._record("params", {"params": {str(k): _clip(v, PARAM_LIMIT) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._record("tags", {"tags": {str(k): _clip(v, TAG_LIMIT) for k, v in tags.items()}})

    def log_dict(self, obj: Any, name: str) -> None:
        if self.enabled:  # the round trip turns numpy/Path values into JSON ones, once, for both paths
            self._record("dict", {"obj": json.loads(json.dumps(obj, default=str)), "name": name})

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        if self.enabled and not Path(path).exists():
            log.warning("tracking: artifact %s does not exist; not logged", path)
            return
        self._record("artifact", {"path": str(Path(path).resolve()), "artifact_path": artifact_path})

    # ------------------------------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _run(self, name: str, tags: dict[str, str]) -> Iterator[Optional[str]]:
        if not self.enabled:
            yield None
            return
        parent = self._stack[-1] if self._stack else None
        run = self._start(name, parent, tags | {"medmcqa_ray.version": __version__,
                                                "medmcqa_ray.data_source": self.cfg.data.source})
        self._stack.append(run)
        status = "FAILED"
        try:
            if parent is None:  # the config belongs to the top-level run only
                self.log_params(flatten(resolved_dict(self.cfg)))
            yield run.key
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self._stack.pop()
            self._record("end", {"status": status, "end_time": int(time.time() * 1000)}, run)

    def _start(self, name: str, parent: Optional[_Run], tags: dict[str, str]) -> _Run:
        # Connect lazily: building a tracker (every rank, every CLI call) costs nothing until a run opens.
        if self._client is None and not self.offline:
            if not _reachable(self.uri):
                self._go_offline(f"tracking server {self.uri} is unreachable")
            else:
                try:
                    with _client_env():
                        self._client = _client(self.uri)
                        self._experiment_id = _experiment(self._client, self.uri, self.cfg.tracking.experiment)
                except Exception as e:
                    self._go_offline(f"tracking store {self.uri} failed ({type(e).__name__}: {e})")
        parent_key = parent.key if parent else None
        if not self.offline:
            try:
                with _client_env():
                    extra = {"mlflow.parentRunId": parent_key} if parent_key else {}
                    info = self._client.create_run(self._experiment_id, run_name=name, tags=tags | extra).info
                return _Run(info.run_id, name, parent_key)
            except Exception as e:
                self._go_offline(f"tracking: starting run {name!r} failed ({type(e).__name__}: {e})")
        run = _Run(OFFLINE_PREFIX + uuid.uuid4().hex[:16], name, parent_key)
        self._write(run, "start", {"tags": tags})
        return run

    def _record(self, kind: str, payload: dict, run: Optional[_Run] = None) -> None:
        if not self.enabled:
            return
        run = run or (self._stack[-1] if self._stack else None)
        if run is None:
            log.warning("tracking: %s logged outside any run; open pipeline_run or stage_run first", kind)
            return
        if not self.offline:  # an offline tracker never goes back: replay keeps the order whole
            try:
                with _client_env():
                    _send(self._client, run.key, kind, payload)
                return
            except Exception as e:
                if _refused(e):
                    log.warning("tracking: MLflow refused %s for run %r: %s", kind, run.name, e)
                    return
                self._go_offline(f"tracking call {kind} failed ({type(e).__name__}: {e})")
        self._write(run, kind, payload)

    def _go_offline(self, reason: str) -> None:
        if not self.offline:  # the reason may quote the URI (and MLflow's errors the URL), credentials and all
            log.warning("%s; tracking goes on offline in %s (send it later with replay_offline)",
                        redact_uri(reason), offline_dir(self.cfg))
        self.offline = True

    def _write(self, run: _Run, kind: str, payload: dict) -> None:
        folder = offline_dir(self.cfg)
        if kind == "artifact":
            # Copy now: checkpoints get overwritten and temp files vanish before anyone replays.
            src = Path(payload["path"])
            dest = folder / f"{run.key}.files" / uuid.uuid4().hex[:8] / src.name
            dest.parent.mkdir(parents=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
            payload = payload | {"path": str(dest)}
        folder.mkdir(parents=True, exist_ok=True)
        record = {"run": run.key, "name": run.name, "parent": run.parent, "kind": kind, "payload": payload,
                  "experiment": self.cfg.tracking.experiment, "timestamp": time.time()}
        with open(folder / f"{run.key}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def replay_offline(cfg: Config, target_uri: Optional[str] = None) -> int:
    """Send offline records to `target_uri` (default: the config's store), creating their runs.

    Returns how many records were sent; the replayed files move to `offline/replayed/`. A run that was
    live before the server died is continued when the target still has it.
    """
    folder = offline_dir(cfg)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        return 0
    uri = target_uri or tracking_uri(cfg)
    if not _reachable(uri):
        raise TrackingUnavailableError(f"tracking server {redact_uri(uri)} is unreachable; offline records kept in {folder}")
    records = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed process
                log.warning("tracking: %s:%d is not a complete record; skipped", f, n)
    records.sort(key=lambda r: r["timestamp"])  # stable: a parent's start precedes its children's
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(r["run"], r)
    ids: dict[str, Optional[str]] = {}
    experiments: dict[str, str] = {}
    with _client_env():
        client = _client(uri)

        def resolve(key: Optional[str]) -> Optional[str]:
            if key is None or key in ids:
                return ids.get(key) if key else None
            ids[key] = None
            if not key.startswith(OFFLINE_PREFIX):  # a run that was live before the server died
                with contextlib.suppress(Exception):
                    ids[key] = client.get_run(key).info.run_id
            if ids[key] is None and key in first:
                r = first[key]
                if r["experiment"] not in experiments:
                    experiments[r["experiment"]] = _experiment(client, uri, r["experiment"])
                tags = dict(r["payload"].get("tags", {})) if r["kind"] == "start" else {}
                parent = resolve(r["parent"])
                if parent:
                    tags["mlflow.parentRunId"] = parent
                ids[key] = client.create_run(experiments[r["experiment"]], start_time=int(r["timestamp"] * 1000),
                                             tags=tags, run_name=r["name"]).info.run_id
            return ids[key]  # None: a parent the target never had; the child becomes top-level

        for r in records:
            run_id = resolve(r["run"])
            if r["kind"] != "start" and run_id is not None:
                _send(client, run_id, r["kind"], r["payload"])
    done = folder / "replayed"
    done.mkdir(exist_ok=True)
    for f in files:
        for path in (f, f.with_suffix(".files")):
            if path.exists():
                shutil.move(str(path), str(done / path.name))
    return len(records)

