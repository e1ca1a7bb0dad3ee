"""The Ray Tune side of a sweep: the search space, the trainable (one GRPO run on Ray Train per trial),
the scheduler and search algorithm, and each finished trial read back as a record.

The Ray Train V2 pattern: the trainable is a function that builds and fits the GRPO TorchTrainer for its
trial's weights, with TuneReportCallback carrying the learner's per-step reports (TRL's metrics, mean
`correct`, and every sweep.eval_every steps the greedy accuracy on fixed validation questions) to Tune,
whose ASHA scheduler stops the trials that trail. Every trial continues the same SFT adapter on the
same prompts with the same seeds: only the weights differ.

Imported only when a sweep runs (ray.tune at the top)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from medmcqa_ray import metric_names as M
from medmcqa_ray.config import Config, SearchDimension
from medmcqa_ray.layout import layout
from medmcqa_ray.tracking import RunRef, Tracker, active_run
from medmcqa_ray.training.learner import ValidationArgs
from medmcqa_ray.tuning.records import TrialRecord, TrialRun
from medmcqa_ray.tuning.weights import with_weights

log = logging.getLogger(__name__)

TRIAL_RUN_FILE = "mlflow_run.json"
# What each sweep.metric is called in the learner's reports.
METRIC_KEYS = {"selection_accuracy": M.SELECTION_ACCURACY, "correct": M.CORRECT}
CURVES = (M.SELECTION_ACCURACY, M.CORRECT, M.FORMAT_EXACT, M.REWARD, M.LOSS, M.ENTROPY, M.COMPLETION_LENGTH,
          M.LOGPROB_ABS_DIFF, M.TIMING_STEP)


def _dimension(name: str, d: SearchDimension) -> Any:
    if d.grid is not None:
        return tune.grid_search(d.grid)
    if d.choice is not None:
        return tune.choice(d.choice)
    if d.uniform is not None:
        return tune.uniform(*d.uniform)
    if d.loguniform is not None:
        return tune.loguniform(*d.loguniform)
    # SearchDimension's validator requires one of the four; only a model_copy past it gets here.
    raise ValueError(f"sweep.space.{name}: give exactly one of grid, choice, uniform, loguniform")


def _trial(config: dict, cfg: Config, key: str, parent: Optional[RunRef]) -> None:
    """One trial: GRPO with this trial's weights, reporting every step to Tune, and logging it live into
    its own MLflow run under the sweep's (`parent`; the run's reference in the trial folder, for the record)."""
    from medmcqa_ray.training.grpo import train

    trial_id = tune.get_context().get_trial_id()
    folder = layout(cfg).sweep_trial(trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    tracker = Tracker.attached(cfg, parent) if parent else Tracker(cfg, enabled=False)
    with tracker.nested_run(f"trial-{trial_id}", {"medmcqa_ray.kind": "trial", "medmcqa_ray.trial_id": trial_id}):
        tracker.log_params({f"weight.{k}": v for k, v in config["weights"].items()})
        if ref := active_run():
            (folder / TRIAL_RUN_FILE).write_text(ref.model_dump_json(exclude={"uri"}))  # it may hold credentials
        train(with_weights(cfg, config["weights"]), key=f"{key}-{trial_id}", name=f"sweep-{cfg.sweep.name}-{trial_id}",
              final_dir=folder / "adapter", run_callbacks=[TuneReportCallback()],
              validation=ValidationArgs(rows=cfg.sweep.eval_rows, every=cfg.sweep.eval_every), tracking=ref)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rung records survive `Tuner.restore`. Tune restores the trials but re-creates the
    scheduler as it was configured, so a restored sweep would judge its next trial against empty
    rungs and never stop it. This one saves its records after every result and reloads them when the
    restored sweep starts (`set_search_properties` runs before the trials are re-added)."""

    def __init__(self, state_file: str, **kwargs):
        super().__init__(**kwargs)
        self.state_file = state_file

    def set_search_properties(self, metric, mode, **spec) -> bool:
        accepted = super().set_search_properties(metric, mode, **spec)
        if Path(self.state_file).exists():
            self.restore(self.state_file)
        return accepted

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return decision

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()

    def _persist(self) -> None:
        partial = f"{self.state_file}.partial"  # a sweep killed mid-write keeps the previous records
        self.save(partial)
        os.replace(partial, self.state_file)


def _search_alg(cfg: Config) -> Any:
    if cfg.sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    if cfg.sweep.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch()
    return None  # Tune's BasicVariantGenerator: grid and random sampling


def tuner(cfg: Config, key: str, parent: Optional[RunRef]) -> tune.Tuner:
    """The sweep's Tuner; the interrupted sweep's, restored, when there is one. `parent`: the sweep's
    MLflow run, under which each trial opens its own."""
    s = cfg.sweep
    folder = layout(cfg).sweep_tune
    trainable = tune.with_resources(tune.with_parameters(_trial, cfg=cfg, key=key, parent=parent), {"CPU": s.trial_cpus})
    path = folder / s.name
    if tune.Tuner.can_restore(path):
        log.warning("sweep: restoring the interrupted sweep at %s (finished trials are kept)", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    # stop_last_trials=False: a trial that reaches max_t finishes on its own, writing its adapter.
    scheduler = (ResumableASHA(str(folder / "scheduler.pkl"), time_attr=M.STEP, max_t=cfg.grpo.max_steps,
                               grace_period=s.grace_period, reduction_factor=s.reduction_factor, stop_last_trials=False)
                 if s.scheduler == "asha" else None)
    return tune.Tuner(
        trainable,
        param_space={"weights": {name: _dimension(name, d) for name, d in s.space.items()}},
        tune_config=tune.TuneConfig(metric=METRIC_KEYS[s.metric], mode="max", scheduler=scheduler,
                                    search_alg=_search_alg(cfg), num_samples=s.num_samples,
                                    max_concurrent_trials=s.max_concurrent_trials),
        run_config=tune.RunConfig(name=s.name, storage_path=str(folder)),
    )


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def trial_record(result: Any, cfg: Config) -> TrialRecord:
    """A finished (or stopped, or failed) trial: its weights, status, last step, final figures and curves."""
    frame = result.metrics_dataframe
    rows = frame.to_dict("records") if frame is not None else []
    # selection_accuracy is carried from step to step between scorings: keep the steps it was scored at.
    scored = {name: [[int(r[M.STEP]), v] for r in rows if _number(r.get(M.STEP)) is not None
                     and (v := _number(r.get(name))) is not None
                     and (name != M.SELECTION_ACCURACY or _number(r.get(M.SELECTION_ACCURACY_STEP)) == _number(r[M.STEP]))]
              for name in CURVES}
    curves = {name: sorted({s: v for s, v in points}.items()) for name, points in scored.items() if points}
    last_step = max((int(r[M.STEP]) for r in rows if _number(r.get(M.STEP)) is not None), default=0)
    status = "error" if result.error else ("completed" if last_step >= cfg.grpo.max_steps else "early_stopped")
    final = {name: points[-1][1] for name, points in curves.items()}
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    run_file = layout(cfg).sweep_trial(trial_id) / TRIAL_RUN_FILE
    return TrialRecord(trial_id=trial_id, weights=result.config["weights"],
                       mlflow_run=TrialRun.model_validate_json(run_file.read_text()) if run_file.is_file() else None,
                       status=status, last_step=last_step, selection_accuracy=final.get(M.SELECTION_ACCURACY),
                       correct=final.get(M.CORRECT), error=str(result.error) if result.error else None,
                       curves={name: list(points) for name, points in curves.items()})
