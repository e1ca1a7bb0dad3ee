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

Live. A stage hands its open run (`active_run()`, a `RunRef`) to the processes that log into it while
it works: rank 0 of the Ray Train learners (`Tracker.attached`, each step and MLflow's system metrics),
and a sweep's trials, which open their own runs under it. The stage's record does not send again what
they sent.

Models. A training stage's record logs its adapter as an MLflow pyfunc model (adapter_model.py) and
registers it as a version of <experiment>-<head>; eval tags the versions it scored with their accuracy
and moves alias `best` (`Tracker.move_best`). A registry that refuses costs a warning, never the run.

Modules: tracker.py (the Tracker and its offline journal), store.py (the URI, the server probe, the
MLflow client, `send`, the registry calls), replay.py (`replay_offline`), adapter_model.py (the pyfunc),
adapter_source.py (adapters.<head> = models:/... or runs:/..., fetched before the stages start).
"""

from medmcqa_ray.tracking.replay import replay_offline
from medmcqa_ray.tracking.store import (
    PARAM_LIMIT,
    TAG_LIMIT,
    TrackingUnavailableError,
    offline_dir,
    tracking_uri,
    ui_command,
)
from medmcqa_ray.tracking.tracker import RunRef, Tracker, active_run

__all__ = ["PARAM_LIMIT", "TAG_LIMIT", "RunRef", "Tracker", "active_run", "TrackingUnavailableError", "offline_dir", "replay_offline",
           "tracking_uri", "ui_command"]
