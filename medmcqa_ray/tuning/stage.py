"""The sweep stage: Ray Tune over reward weights, each trial a GRPO run on Ray Train (tuner.py).

Under output_dir/sweeps/<name>/: `tune/` (Tune's experiment: an interrupted sweep is restored from
it, finished trials are not run again), `trials/<id>/adapter`, `results.json`, and `best.yaml`, a
config overlay (`jobs/full.py --config configs/gpu.yaml --config .../best.yaml`). In MLflow, each trial
is a run nested under the sweep's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import yaml

from medmcqa_ray.config import Config
from medmcqa_ray.layout import SELECTION, layout
from medmcqa_ray.stage import Manifest, Stage, hash_parts
from medmcqa_ray.tuning.records import TrialRecord
from medmcqa_ray.tuning.weights import overlay

if TYPE_CHECKING:
    from medmcqa_ray.tracking import Tracker


class SweepManifest(Manifest):
    stage: str = "sweep"
    name: str
    metric: str
    experiment: str
    trials: list[TrialRecord]
    best: TrialRecord
    best_weights: dict[str, float]
    best_yaml: str
    ranked_on: str = ""
    """The questions `selection_accuracy` was scored on: the selection split, never validation."""

    def metrics(self) -> dict[str, float]:
        best = {"selection_accuracy": self.best.selection_accuracy, "correct": self.best.correct}
        return {f"best/{k}": v for k, v in best.items() if v is not None}

    def params(self) -> dict[str, Any]:
        return {f"best.weight.{k}": v for k, v in self.best_weights.items()}

    def artifacts(self) -> list[tuple[Path, str]]:
        return [(Path(self.best_yaml), "sweep")]

    def table(self) -> str:
        names = sorted({k for t in self.trials for k in t.weights})
        head = "".join(f"{'w.' + n:>12}" for n in names)
        lines = [f"{'trial':<22}{head}{'status':>15}{'steps':>6}{'sel_acc':>9}{'correct':>9}"]
        for t in self.trials:
            w = "".join(f"{t.weights.get(n, float('nan')):>12.3g}" for n in names)
            va = f"{t.selection_accuracy:.3f}" if t.selection_accuracy is not None else "-"
            co = f"{t.correct:.3f}" if t.correct is not None else "-"
            mark = " *" if t.trial_id == self.best.trial_id else ""
            lines.append(f"{t.trial_id:<22}{w}{t.status:>15}{t.last_step:>6}{va:>9}{co:>9}{mark}")
        return "\n".join(lines + [f"* best by {self.metric}; sel_acc: {self.ranked_on}", f"overlay: {self.best_yaml}"])


def _concurrent_trials(cfg: Config) -> int:
    """Trials Tune runs at once: sweep.max_concurrent_trials, or fewer when the sweep has fewer."""
    s = cfg.sweep
    return min(s.max_concurrent_trials, s.num_samples * math.prod(len(d.grid) for d in s.space.values() if d.grid))


def _check(cfg: Config) -> int:
    """What must hold before any trial starts: the SFT adapter, the prompts, the selection rows, and
    room for the trials that run at once. Returns how many selection questions each trial is scored on."""
    from medmcqa_ray.training.grpo import check_config
    from medmcqa_ray.training.validation import selection_rows

    check_config(cfg)
    if (concurrent := _concurrent_trials(cfg)) > 1:
        from medmcqa_ray.training.capacity import check_resources

        # Tune starts trials on 0.1 CPU each; their learners would otherwise queue behind each other and
        # fail the placement wait (placement.timeout_s) one by one.
        check_resources(cfg, copies=concurrent)
    return len(selection_rows(cfg, cfg.sweep.eval_rows))


def _ranked(trials: list[TrialRecord], metric: Literal["selection_accuracy", "correct"]) -> list[TrialRecord]:
    """Trials that finished with a figure, best first: completed before stopped, then by `metric`."""
    def figure(t: TrialRecord) -> Optional[float]:
        return t.selection_accuracy if metric == "selection_accuracy" else t.correct

    return sorted((t for t in trials if t.status != "error" and figure(t) is not None),
                  key=lambda t: (t.status == "completed", figure(t), t.correct or 0.0), reverse=True)


class SweepStage(Stage[SweepManifest]):
    name = "sweep"
    manifest_type = SweepManifest

    def inputs(self, cfg: Config) -> list[Path]:
        paths = layout(cfg)
        return [paths.adapter("sft"), paths.formatted(cfg.grpo.split), paths.formatted(SELECTION)]

    def output(self, cfg: Config) -> Path:
        return layout(cfg).sweep_dir

    def manifest_path(self, cfg: Config) -> Path:
        return layout(cfg).sweep_manifest

    def cache_key(self, cfg: Config) -> str:
        from medmcqa_ray.training.grpo import STAGE as GRPO

        return hash_parts(GRPO.cache_key(cfg), cfg.section_hash("sweep"))

    def run(self, cfg: Config) -> SweepManifest:
        from medmcqa_ray.tracking import active_run
        from medmcqa_ray.tuning.tuner import trial_record, tuner

        key = self.cache_key(cfg)
        scored = _check(cfg)
        folder = layout(cfg).sweep_dir
        folder.mkdir(parents=True, exist_ok=True)
        results = tuner(cfg, key, active_run()).fit()
        trials = [trial_record(results[i], cfg) for i in range(len(results))]
        metric = cfg.sweep.metric
        ranked = _ranked(trials, metric)
        if not ranked:
            raise RuntimeError(f"sweep {cfg.sweep.name}: no trial finished with a {metric} "
                               f"({[t.error for t in trials if t.error][:1]})")
        best = ranked[0]
        best_overlay = overlay(cfg, best.weights)
        best_yaml = folder / "best.yaml"
        best_yaml.write_text(f"# Best reward weights of sweep {cfg.sweep.name} by {metric} (trial {best.trial_id}).\n"
                             + yaml.safe_dump(best_overlay, sort_keys=False))
        (folder / "results.json").write_text(json.dumps([t.model_dump(mode="json") for t in trials], indent=2))
        return SweepManifest(name=cfg.sweep.name, metric=metric, experiment=str(layout(cfg).sweep_tune / cfg.sweep.name),
                             trials=trials, best=best,
                             best_weights=best_overlay["rewards"]["weights"], best_yaml=str(best_yaml), config_hash=key,
                             ranked_on=f"greedy accuracy on {scored} questions of the selection split (data.selection_rows; "
                                       "validation is only reported)")

    def record(self, tracker: "Tracker", manifest: SweepManifest) -> None:
        """The default record (best weights as params, best figures as metrics, best.yaml) and the results
        table. Each trial logged its own run live; here each gets its outcome (status, early stopped), a
        stopped one its end, and one run before an interruption moves under this sweep run."""
        from medmcqa_ray.tracking import RunRef, Tracker

        super().record(tracker, manifest)
        for t in manifest.trials:
            if not (tracker.enabled and t.mlflow_run):
                continue
            trial = Tracker.attached(tracker.cfg, RunRef(uri=tracker.uri, **t.mlflow_run.model_dump()))
            tags = {"medmcqa_ray.status": t.status, "medmcqa_ray.early_stopped": str(t.status == "early_stopped").lower()}
            if tracker.run_id and t.mlflow_run.parent != tracker.run_id:
                tags["mlflow.parentRunId"] = tracker.run_id
            trial.set_tags(tags)
            if t.status != "completed":  # Tune may have stopped its process before the run's end
                trial.end("KILLED" if t.status == "early_stopped" else "FAILED")
        tracker.log_dict([t.model_dump(mode="json") for t in manifest.trials], "sweep_results.json")


STAGE = SweepStage()
