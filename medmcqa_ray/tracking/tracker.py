"""The Tracker: one process's MLflow runs (a pipeline run, stage runs nested in it) and its calls, sent
live or, once the store is unreachable, appended to the offline journal that replay.py sends later."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray import __version__
from medmcqa_ray.config import Config, flatten, resolved_dict
from medmcqa_ray.redaction import redact_uri
from medmcqa_ray.tracking.calls import (EndRun, LogArtifact, LogDict, LogMetrics, LogModel, LogParams, LogTable,
                                        MoveBest, OfflineRecord, SetTags, StartRun, TrackingCall)
from medmcqa_ray.tracking.store import (
    ADAPTER_SHA_TAG,
    OFFLINE_PREFIX,
    PARAM_LIMIT,
    RegistrationRefused,
    TAG_LIMIT,
    client_env,
    experiment_id,
    make_client,
    offline_dir,
    reachable,
    refused,
    registered_model_name,
    run_page,
    send,
    tracking_uri,
)

if TYPE_CHECKING:
    from medmcqa_ray.evaluation.eval_set import EvalSet

# The package's name, not this module's: users and tests filter tracking warnings on "medmcqa_ray.tracking".
log = logging.getLogger("medmcqa_ray.tracking")


def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Run:
    key: str  # the MLflow run id, or offline-<hex> for a run the store never saw
    name: str
    parent: Optional[str]


class RunRef(BaseModel):
    """An open run as another process (a learner's rank 0, a Tune trial) gets it, to log into it live."""

    model_config = ConfigDict(frozen=True)
    uri: str
    run_id: str
    name: str
    parent: Optional[str] = None


# The innermost run this process has open: what a stage hands its learners (`active_run`).
_ACTIVE: contextvars.ContextVar[Optional[RunRef]] = contextvars.ContextVar("medmcqa_ray_active_run", default=None)


def active_run() -> Optional[RunRef]:
    """The run the calling code runs inside (None when tracking is off or no run is open)."""
    return _ACTIVE.get()


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

    @classmethod
    def attached(cls, cfg: Config, ref: RunRef) -> "Tracker":
        """A tracker that logs into a run another process opened (and will end): its metrics reach that
        run as they happen; while the store is unreachable they go to the offline journal under its id."""
        tracker = cls(cfg)
        tracker.uri = ref.uri
        tracker.offline = ref.run_id.startswith(OFFLINE_PREFIX)
        tracker._stack = [_Run(ref.run_id, ref.name, ref.parent)]
        return tracker

    def page(self, run_id: Optional[str]) -> str:
        """The UI address of `run_id` in this tracker's experiment ("" when it never reached the store)."""
        return run_page(self._experiment_id, run_id) if self._experiment_id and run_id and not run_id.startswith(OFFLINE_PREFIX) else ""

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
        self._record(LogMetrics(metrics=values, step=step, ts=int(time.time() * 1000)))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._record(LogParams(params={str(k): _clip(v, PARAM_LIMIT) for k, v in params.items()}))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._record(SetTags(tags={str(k): _clip(v, TAG_LIMIT) for k, v in tags.items()}))

    def log_dict(self, obj: Any, name: str) -> None:
        if self.enabled:  # the round trip turns numpy/Path values into JSON ones, once, for both paths
            self._record(LogDict(obj=json.loads(json.dumps(obj, default=str)), name=name))

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        if self.enabled and not Path(path).exists():
            log.warning("tracking: artifact %s does not exist; not logged", path)
            return
        self._record(LogArtifact(path=str(Path(path).resolve()), artifact_path=artifact_path))

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        """Columns of equal length as an MLflow table (the run page's artifact view shows it as one)."""
        if self.enabled:
            self._record(LogTable(data=json.loads(json.dumps(data, default=str)), artifact_file=artifact_file))

    def log_adapter_model(self, head: str, adapter: Path) -> None:
        """The adapter as an MLflow model in the open run (artifact `model`), registered as a new version of
        `registered_model_name(cfg, head)`. A registry that refuses costs a warning; the model stays logged."""
        if not (self.enabled and self.cfg.tracking.register_models):
            return
        from medmcqa_ray.adapters import adapter_checksum, read_adapter
        from medmcqa_ray.tracking.adapter_model import save_adapter_model

        adapter_sha = adapter_checksum(read_adapter(adapter)[1])
        saved = save_adapter_model(adapter, self.cfg)
        try:
            self._record(LogModel(path=str(saved), artifact_path="model", name=registered_model_name(self.cfg, head),
                                  tags={ADAPTER_SHA_TAG: adapter_sha, "medmcqa_ray.head": head}))
        finally:
            shutil.rmtree(saved.parent, ignore_errors=True)

    def logged_steps(self, metric: str) -> set[int]:
        """The steps the open run has `metric` at (empty when the store cannot say: offline or off)."""
        if not self.online() or self.run_id is None:
            return set()
        try:
            with client_env():
                return {m.step for m in self._client.get_metric_history(self.run_id, metric)}
        except Exception:
            return set()  # an unanswered question costs a duplicate point, never the run

    def end(self, status: str) -> None:
        """End the innermost run (an attached tracker's: a run whose process was stopped before its end)."""
        self._record(EndRun(status=status, end_time=int(time.time() * 1000)))

    def online(self) -> bool:
        """Connected to the store (connecting now if not yet): False once tracking went offline or is off."""
        if self.enabled:
            self._connect()
        return self.enabled and not self.offline

    def move_best(self, head: str, adapter_sha: str, scored: "EvalSet", accuracy: float, ci95: list[float]) -> None:
        """Record the accuracy (with its interval and evaluation set) on the registered version holding this
        adapter, and move alias `best` of the head's registered model among versions scored on that set."""
        if self.enabled and self.cfg.tracking.register_models:
            self._record(MoveBest(name=registered_model_name(self.cfg, head), adapter_sha=adapter_sha,
                                  set_key=scored.key, set_n=scored.n, set_text=scored.describe(),
                                  accuracy=float(accuracy), ci95=[float(x) for x in ci95]))

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
        token = _ACTIVE.set(RunRef(uri=self.uri, run_id=run.key, name=run.name, parent=run.parent))
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
            _ACTIVE.reset(token)
            self._stack.pop()
            self._record(EndRun(status=status, end_time=int(time.time() * 1000)), run)

    def _connect(self) -> None:
        # Lazily: building a tracker (every rank, every CLI call) costs nothing until a run opens.
        if self._client is not None or self.offline:
            return
        if not reachable(self.uri):
            self._go_offline(f"tracking server {self.uri} is unreachable")
            return
        try:
            with client_env():
                self._client = make_client(self.uri)
                self._experiment_id = experiment_id(self._client, self.uri, self.cfg.tracking.experiment)
        except Exception as e:
            self._go_offline(f"tracking store {self.uri} failed ({type(e).__name__}: {e})")

    def _start(self, name: str, parent: Optional[_Run], tags: dict[str, str]) -> _Run:
        self._connect()
        parent_key = parent.key if parent else None
        if not self.offline:
            try:
                with client_env():
                    extra = {"mlflow.parentRunId": parent_key} if parent_key else {}
                    info = self._client.create_run(self._experiment_id, run_name=name, tags=tags | extra).info
                return _Run(info.run_id, name, parent_key)
            except Exception as e:
                self._go_offline(f"tracking: starting run {name!r} failed ({type(e).__name__}: {e})")
        run = _Run(OFFLINE_PREFIX + uuid.uuid4().hex[:16], name, parent_key)
        self._write(run, StartRun(tags=tags))
        return run

    def _record(self, call: TrackingCall, run: Optional[_Run] = None) -> None:
        if not self.enabled:
            return
        run = run or (self._stack[-1] if self._stack else None)
        if run is None:
            log.warning("tracking: %s logged outside any run; open pipeline_run or stage_run first", call.kind)
            return
        self._connect()  # an attached tracker's first call
        if not self.offline:  # an offline tracker never goes back: replay keeps the order whole
            try:
                with client_env():
                    send(self._client, run.key, call)
                return
            except RegistrationRefused as e:
                log.warning("tracking: %s; the run's artifacts are logged", e)
                return
            except Exception as e:
                if refused(e):
                    log.warning("tracking: MLflow refused %s for run %r: %s", call.kind, run.name, e)
                    return
                self._go_offline(f"tracking call {call.kind} failed ({type(e).__name__}: {e})")
        self._write(run, call)

    def _go_offline(self, reason: str) -> None:
        if not self.offline:  # the reason may quote the URI (and MLflow's errors the URL), credentials and all
            log.warning("%s; tracking goes on offline in %s (send it later with replay_offline)",
                        redact_uri(reason), offline_dir(self.cfg))
        self.offline = True

    def _write(self, run: _Run, call: TrackingCall) -> None:
        folder = offline_dir(self.cfg)
        if isinstance(call, (LogArtifact, LogModel)):
            # Copy now: checkpoints get overwritten and temp files vanish before anyone replays.
            src = Path(call.path)
            dest = folder / f"{run.key}.files" / uuid.uuid4().hex[:8] / src.name
            dest.parent.mkdir(parents=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
            call = call.model_copy(update={"path": str(dest)})
        folder.mkdir(parents=True, exist_ok=True)
        record = OfflineRecord.of(call, run.key, run.name, run.parent, self.cfg.tracking.experiment, time.time())
        with open(folder / f"{run.key}.jsonl", "a") as f:
            f.write(record.model_dump_json() + "\n")

