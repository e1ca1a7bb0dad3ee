"""The `sweep` stage: Ray Tune over reward weights, each trial a GRPO run on Ray Train.

The Ray Train V2 pattern: the trainable is a function that builds and fits the GRPO `TorchTrainer`
for its trial's weights, with `TuneReportCallback` carrying the learner's per-step reports (TRL's
metrics, mean `correct`, and every `sweep.eval_every` steps the greedy accuracy on a fixed set of
validation questions) to Tune, whose ASHA scheduler stops the trials that trail. Every trial continues
the same SFT adapter on the same prompts with the same seeds: only the weights differ.

Under output_dir/sweeps/<name>/: `tune/` (Tune's experiment: an interrupted sweep is restored from
it, finished trials are not run again), `trials/<id>/adapter`, `results.json`, and `best.yaml`, a
config overlay (`jobs/full.py --config configs/gpu.yaml --config .../best.yaml`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml
from ray.tune.schedulers import ASHAScheduler

from medmcqa_ray.config import BUILTIN_REWARDS, Config, SearchDimension

log = logging.getLogger(__name__)

# What each sweep.metric is called in the learner's reports.
METRIC_KEYS = {"val_accuracy": "val_accuracy", "correct": "rewards/correct/mean"}
CURVES = ("val_accuracy", "rewards/correct/mean", "rewards/format_exact/mean", "reward", "loss", "entropy",
          "completions/mean_length", "rollout/logprob_abs_diff", "timing/step")


def sweep_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / "sweeps" / cfg.sweep.name


def _dimension(d: SearchDimension) -> Any:
    from ray import tune

    if d.grid is not None:
        return tune.grid_search(d.grid)
    if d.choice is not None:
        return tune.choice(d.choice)
    if d.uniform is not None:
        return tune.uniform(*d.uniform)
    return tune.loguniform(*d.loguniform)


def with_weights(cfg: Config, weights: dict[str, float]) -> Config:
    """The config with these reward weights (built-in ones in rewards.weights, custom ones in their entry)."""
    rewards = cfg.rewards
    builtin = rewards.weights | {k: v for k, v in weights.items() if k in BUILTIN_REWARDS}
    custom = {k: c.model_copy(update={"weight": weights.get(k, c.weight)}) for k, c in rewards.custom.items()}
    return cfg.model_copy(update={"rewards": rewards.model_copy(update={"weights": builtin, "custom": custom})})


def _trial(config: dict, cfg: Config, key: str) -> None:
    """One trial: GRPO with this trial's weights, reporting every step to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from medmcqa_ray.training.grpo import run_grpo

    trial_id = tune.get_context().get_trial_id()
    folder = sweep_dir(cfg) / "trials" / trial_id
    run_grpo(with_weights(cfg, config["weights"]), key=f"{key}-{trial_id}", name=f"sweep-{cfg.sweep.name}-{trial_id}",
             final_dir=folder / "adapter", run_callbacks=[TuneReportCallback()],
             validate={"rows": cfg.sweep.eval_rows, "every": cfg.sweep.eval_every})


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


def _tuner(cfg: Config, key: str) -> Any:
    from ray import tune

    s = cfg.sweep
    trainable = tune.with_resources(tune.with_parameters(_trial, cfg=cfg, key=key), {"CPU": s.trial_cpus})
    path = sweep_dir(cfg) / "tune" / s.name
    if tune.Tuner.can_restore(path):
        log.warning("sweep: restoring the interrupted sweep at %s (finished trials are kept)", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    # stop_last_trials=False: a trial that reaches max_t finishes on its own, writing its adapter.
    scheduler = (ResumableASHA(str(sweep_dir(cfg) / "tune" / "scheduler.pkl"), time_attr="step", max_t=cfg.grpo.max_steps,
                               grace_period=s.grace_period, reduction_factor=s.reduction_factor, stop_last_trials=False)
                 if s.scheduler == "asha" else None)
    return tune.Tuner(
        trainable,
        param_space={"weights": {name: _dimension(d) for name, d in s.space.items()}},
        tune_config=tune.TuneConfig(metric=METRIC_KEYS[s.metric], mode="max", scheduler=scheduler,
                                    search_alg=_search_alg(cfg), num_samples=s.num_samples,
                                    max_concurrent_trials=s.max_concurrent_trials),
        run_config=tune.RunConfig(name=s.name, storage_path=str(sweep_dir(cfg) / "tune")),
    )


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _trial_record(result: Any, cfg: Config) -> dict:
    frame = result.metrics_dataframe
    rows = frame.to_dict("records") if frame is not None else []
    # val_accuracy is carried from step to step between scorings: keep the steps it was scored at.
    curves = {name: [[int(r["step"]), v] for r in rows if _number(r.get("step")) is not None
                     and (v := _number(r.get(name))) is not None
                     and (name != "val_accuracy" or _number(r.get("val_accuracy_step")) == _number(r["step"]))]
              for name in CURVES}
    curves = {name: sorted({s: v for s, v in points}.items()) for name, points in curves.items() if points}
    last_step = max((int(r["step"]) for r in rows if _number(r.get("step")) is not None), default=0)
    status = "error" if result.error else ("completed" if last_step >= cfg.grpo.max_steps else "early_stopped")
    final = {name: points[-1][1] for name, points in curves.items()}
    return {"trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name, "weights": result.config["weights"],
            "status": status, "last_step": last_step, "val_accuracy": final.get("val_accuracy"),
            "correct": final.get("rewards/correct/mean"), "error": str(result.error) if result.error else None,
            "curves": {name: [list(p) for p in points] for name, points in curves.items()}}


def _concurrent_trials(cfg: Config) -> int:
    """Trials Tune runs at once: sweep.max_concurrent_trials, or fewer when the sweep has fewer."""
    s = cfg.sweep
    return min(s.max_concurrent_trials, s.num_samples * math.prod(len(d.grid) for d in s.space.values() if d.grid))


def run_sweep(cfg: Config, key: str = "") -> dict:
    from medmcqa_ray.training.grpo import check_config, labelled_rows

    check_config(cfg)  # the SFT adapter and the prompts, before any trial starts
    if (concurrent := _concurrent_trials(cfg)) > 1:
        from medmcqa_ray.training.placement import check_resources

        # Tune starts trials on 0.1 CPU each; their learners would otherwise queue behind each other and
        # fail the placement wait (placement.timeout_s) one by one.
        check_resources(cfg, copies=concurrent)
    labelled_rows(cfg, "validation", cfg.sweep.eval_rows)
    folder = sweep_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    results = _tuner(cfg, key).fit()
    trials = [_trial_record(results[i], cfg) for i in range(len(results))]
    metric = "val_accuracy" if cfg.sweep.metric == "val_accuracy" else "correct"
    ranked = sorted((t for t in trials if t["status"] != "error" and t[metric] is not None),
                    key=lambda t: (t["status"] == "completed", t[metric], t["correct"] or 0.0), reverse=True)
    if not ranked:
        raise RuntimeError(f"sweep {cfg.sweep.name}: no trial finished with a {metric} "
                           f"({[t['error'] for t in trials if t['error']][:1]})")
    best = ranked[0]
    best_cfg = with_weights(cfg, best["weights"])
    overlay: dict[str, Any] = {"rewards": {"weights": dict(best_cfg.rewards.weights)}}
    if best_cfg.rewards.custom:
        overlay["rewards"]["custom"] = {k: {"weight": c.weight} for k, c in best_cfg.rewards.custom.items()}
    best_yaml = folder / "best.yaml"
    best_yaml.write_text(f"# Best reward weights of sweep {cfg.sweep.name} by {metric} (trial {best['trial_id']}).\n"
                         + yaml.safe_dump(overlay, sort_keys=False))
    (folder / "results.json").write_text(json.dumps(trials, indent=2))
    return {"stage": "sweep", "name": cfg.sweep.name, "metric": metric, "experiment": str(folder / "tune" / cfg.sweep.name),
            "trials": trials, "best": {k: best[k] for k in ("trial_id", "weights", "val_accuracy", "correct")},
            "best_weights": overlay["rewards"]["weights"], "best_yaml": str(best_yaml)}


def results_table(manifest: dict) -> str:
    names = sorted({k for t in manifest["trials"] for k in t["weights"]})
    head = "".join(f"{'w.' + n:>12}" for n in names)
    lines = [f"{'trial':<22}{head}{'status':>15}{'steps':>6}{'val_acc':>9}{'correct':>9}"]
    for t in manifest["trials"]:
        w = "".join(f"{t['weights'].get(n, float('nan')):>12.3g}" for n in names)
        va = f"{t['val_accuracy']:.3f}" if t["val_accuracy"] is not None else "-"
        co = f"{t['correct']:.3f}" if t["correct"] is not None else "-"
        mark = " *" if t["trial_id"] == manifest["best"]["trial_id"] else ""
        lines.append(f"{t['trial_id']:<22}{w}{t['status']:>15}{t['last_step']:>6}{va:>9}{co:>9}{mark}")
    return "\n".join(lines + [f"* best by {manifest['metric']}; overlay: {manifest['best_yaml']}"])
