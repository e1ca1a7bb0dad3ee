"""The stages, their caching, and `all`.

A stage is skipped when its manifest's config_hash equals the hash of the config sections it reads
plus the identity of its inputs; `force=True` redoes it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError
from medmcqa_ray.manifest import read_manifest, write_manifest
from medmcqa_ray.runtime import ensure_ray
from medmcqa_ray.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    manifest: Callable[[Config], Path]
    output: Callable[[Config], Path]
    cache_key: Callable[[Config], str]
    run: Callable[[Config], dict]


def _hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _download_key(cfg: Config) -> str:
    from medmcqa_ray.data.sources import source_key

    return _hash(cfg.section_hash("data"), source_key(cfg.data))


def _prep_key(cfg: Config) -> str:
    upstream = read_manifest(Path(cfg.output_dir) / "data" / "manifest.json") or {}
    return _hash(cfg.section_hash("format"), str(upstream.get("config_hash")))


def _adapter_fingerprint(path: Path) -> str:
    files = sorted(path.glob("*")) if path.is_dir() else []
    return "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _eval_key(heads: list[str]) -> Callable[[Config], str]:
    def key(cfg: Config) -> str:
        from medmcqa_ray.evaluation.stage import adapter_dir, eval_source

        upstream = read_manifest(Path(cfg.output_dir) / "data" / "formatted" / "manifest.json") or {}
        adapters = [_adapter_fingerprint(adapter_dir(cfg, h)) for h in heads if h != "base"]
        src = eval_source(cfg)
        return _hash(cfg.section_hash("model", "format", "eval"), cfg.rollout.engine, ",".join(heads),
                     str(upstream.get("config_hash")), str(src), _adapter_fingerprint(src) if src.is_dir() else "", *adapters)

    return key


def _run_eval(heads: list[str]) -> Callable[[Config], dict]:
    def run(cfg: Config) -> dict:
        from medmcqa_ray.evaluation.stage import run_eval

        # baseline is the base head whatever eval.heads says; eval does the configured heads.
        return run_eval(cfg, heads if heads == ["base"] else [h for h in heads if h in cfg.eval.heads])

    return run


def _eval_dir(cfg: Config) -> Path:
    from medmcqa_ray.evaluation.stage import eval_dir

    return eval_dir(cfg)


def _sft_key(cfg: Config) -> str:
    upstream = read_manifest(Path(cfg.output_dir) / "data" / "formatted" / "manifest.json") or {}
    return _hash(cfg.section_hash("model", "sft", "scaling"), str(upstream.get("config_hash")))


def _run_sft(cfg: Config) -> dict:
    from medmcqa_ray.training.sft import run_sft

    return run_sft(cfg, key=_sft_key(cfg))


def _grpo_key(cfg: Config) -> str:
    from medmcqa_ray.training.grpo import sft_adapter

    upstream = read_manifest(Path(cfg.output_dir) / "data" / "formatted" / "manifest.json") or {}
    return _hash(cfg.section_hash("model", "grpo", "rewards", "rollout", "scaling", "format"),
                 str(upstream.get("config_hash")), _adapter_fingerprint(sft_adapter(cfg)))


def _run_grpo(cfg: Config) -> dict:
    from medmcqa_ray.training.grpo import run_grpo

    return run_grpo(cfg, key=_grpo_key(cfg))


def _sweep_key(cfg: Config) -> str:
    return _hash(_grpo_key(cfg), cfg.section_hash("sweep"))


def _run_sweep(cfg: Config) -> dict:
    from medmcqa_ray.tuning import run_sweep

    return run_sweep(cfg, key=_sweep_key(cfg))


def _sweep_dir(cfg: Config) -> Path:
    from medmcqa_ray.tuning import sweep_dir

    return sweep_dir(cfg)


def _run_download(cfg: Config) -> dict:
    from medmcqa_ray.data.download import run_download

    return run_download(cfg)


def _run_prep(cfg: Config) -> dict:
    from medmcqa_ray.data.prep import run_prep

    return run_prep(cfg)


STAGES: dict[str, Stage] = {
    "download": Stage("download", lambda c: Path(c.output_dir) / "data" / "manifest.json",
                      lambda c: Path(c.output_dir) / "data" / "processed", _download_key, _run_download),
    "prep": Stage("prep", lambda c: Path(c.output_dir) / "data" / "formatted" / "manifest.json",
                  lambda c: Path(c.output_dir) / "data" / "formatted", _prep_key, _run_prep),
    "sft": Stage("sft", lambda c: Path(c.output_dir) / "checkpoints" / "sft_manifest.json",
                 lambda c: Path(c.output_dir) / "checkpoints" / "sft", _sft_key, _run_sft),
    "grpo": Stage("grpo", lambda c: Path(c.output_dir) / "checkpoints" / "grpo_manifest.json",
                  lambda c: Path(c.output_dir) / "checkpoints" / "grpo", _grpo_key, _run_grpo),
    "baseline": Stage("baseline", lambda c: _eval_dir(c) / "baseline_manifest.json", _eval_dir,
                      _eval_key(["base"]), _run_eval(["base"])),
    "eval": Stage("eval", lambda c: _eval_dir(c) / "manifest.json", _eval_dir,
                  _eval_key(["base", "sft", "grpo"]), _run_eval(["base", "sft", "grpo"])),
    "sweep": Stage("sweep", lambda c: _sweep_dir(c) / "manifest.json", _sweep_dir, _sweep_key, _run_sweep),
}
ALL = ["download", "prep", "sft", "grpo", "eval"]
SWEEP = ["download", "prep", "sft", "sweep"]  # what jobs/sweep.py runs


def check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise StageError(f"output_dir {output_dir} cannot be written ({e.strerror or e})") from None


def manifest_metrics(manifest: dict) -> dict[str, float]:
    """The numbers of a stage's manifest that belong in MLflow as metrics."""
    metrics: dict[str, float] = {}
    if manifest.get("stage") == "download":
        for split, c in manifest["splits"].items():
            metrics |= {f"data/{split}/{k}": c[k] for k in ("read", "kept", "quarantined", "limited")}
    elif manifest.get("stage") == "prep":
        metrics |= {f"prep/{split}/rows": c["rows"] for split, c in manifest["splits"].items()}
    elif manifest.get("stage") == "sft":
        metrics |= {"sft/first_loss": manifest["first_loss"], "sft/last_loss": manifest["last_loss"],
                    "sft/worker_restarts": manifest.get("worker_restarts", 0)}
    elif manifest.get("stage") == "grpo":
        metrics |= {f"grpo/{k}": manifest[k] for k in ("first_correct", "last_correct") if manifest[k] is not None}
        metrics["grpo/worker_restarts"] = manifest.get("worker_restarts", 0)
    elif manifest.get("stage") == "eval":
        for head, s in manifest["summary"]["heads"].items():
            metrics |= {f"eval/{head}/accuracy": s["accuracy"], f"eval/{head}/ci95_low": s["ci95"][0],
                        f"eval/{head}/ci95_high": s["ci95"][1], f"eval/{head}/format_compliance": s["format_compliance"],
                        f"eval/{head}/n": s["n"]}
    return metrics


def _record(tracker: Tracker, name: str, cfg: Config, manifest: dict) -> None:
    tracker.log_metrics(manifest_metrics(manifest))
    for entry in manifest.get("history", []):  # the trainer's per-step log (loss, learning rate, grad norm, ...)
        step = entry.get("step")
        if step is not None:
            tracker.log_metrics({f"{name}/{k}": v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
    tracker.log_dict(manifest, f"{name}_manifest.json")
    if manifest.get("similarity_scorer"):
        tracker.log_params({"rewards.similarity_scorer": manifest["similarity_scorer"]})
    if manifest.get("stage") == "sweep":
        _record_trials(tracker, manifest)
    if manifest.get("stage") == "eval":
        from medmcqa_ray.evaluation.stage import eval_dir

        for artifact in ("summary.json", "accuracy.png", "eval_results.jsonl"):
            tracker.log_artifact(eval_dir(cfg) / artifact, "eval")


def _record_trials(tracker: Tracker, manifest: dict) -> None:
    """A nested run per trial under the sweep's run (weights as params, curves as metrics); the sweep's
    run holds the results table and the best weights."""
    for t in manifest["trials"]:
        with tracker.nested_run(f"trial-{t['trial_id']}", {"medmcqa_ray.kind": "trial", "medmcqa_ray.status": t["status"],
                                                            "medmcqa_ray.early_stopped": str(t["status"] == "early_stopped").lower()}):
            tracker.log_params({f"weight.{k}": v for k, v in t["weights"].items()})
            for metric, points in t["curves"].items():
                for step, value in points:
                    tracker.log_metrics({metric: value}, step=step)
    tracker.log_params({f"best.weight.{k}": v for k, v in manifest["best_weights"].items()})
    tracker.log_metrics({f"best/{k}": v for k in ("val_accuracy", "correct") if (v := manifest["best"][k]) is not None})
    tracker.log_dict(manifest["trials"], "sweep_results.json")
    tracker.log_artifact(manifest["best_yaml"], "sweep")


def run_stage(name: str, cfg: Config, force: bool = False, tracker: Optional[Tracker] = None) -> dict:
    """Run one stage (or skip it when its manifest matches), recorded as an MLflow run nested under the
    open pipeline run, if any."""
    stage = STAGES[name]
    check_writable(Path(cfg.output_dir))
    tracker = tracker or Tracker(cfg)
    with tracker.stage_run(name):
        key = stage.cache_key(cfg)
        path = stage.manifest(cfg)
        previous = read_manifest(path)
        if not force and previous and previous.get("config_hash") == key and stage.output(cfg).is_dir():
            log.info("%s: up to date (%s matches config_hash %s); skipped, --force redoes it", name, path, key)
            tracker.set_tags({"medmcqa_ray.skipped": "true"})
            return previous | {"skipped": True}
        ensure_ray(cfg.ray)
        manifest = stage.run(cfg) | {"config_hash": key}
        write_manifest(path, manifest)
        _record(tracker, name, cfg, manifest)
        log.info("%s: done, manifest %s", name, path)
        return manifest


def run_all(cfg: Config, force: bool = False, tracker: Optional[Tracker] = None) -> dict[str, dict]:
    tracker = tracker or Tracker(cfg)
    with tracker.pipeline_run("all"):
        return {name: run_stage(name, cfg, force=force, tracker=tracker) for name in ALL}
