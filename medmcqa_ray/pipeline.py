"""The stages by name, and `run_stage`, which runs any of them through the stage contract (stage.py):
skipped when its manifest on disk matches, else run, its manifest written, and recorded in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional, overload

from medmcqa_ray import tuning
from medmcqa_ray.config import Config
from medmcqa_ray.data import download, prep
from medmcqa_ray.data.download import DownloadManifest
from medmcqa_ray.data.prep import PrepManifest
from medmcqa_ray.errors import StageError
from medmcqa_ray.evaluation.stage import BASELINE, EVAL, EvalManifest
from medmcqa_ray.layout import layout
from medmcqa_ray.manifest import write_manifest
from medmcqa_ray.runtime import ensure_ray
from medmcqa_ray.stage import Manifest, Stage
from medmcqa_ray.tracking import Tracker
from medmcqa_ray.tracking.adapter_source import resolve_adapters
from medmcqa_ray.training import grpo, sft
from medmcqa_ray.training.grpo import GRPOManifest
from medmcqa_ray.training.sft import SFTManifest
from medmcqa_ray.tuning import SweepManifest

log = logging.getLogger(__name__)

STAGES: dict[str, Stage] = {s.name: s for s in (download.STAGE, prep.STAGE, sft.STAGE, grpo.STAGE, BASELINE, EVAL, tuning.STAGE)}
ALL = ["download", "prep", "sft", "grpo", "eval"]  # what `medmcqa-ray all` and jobs/full.py run
SWEEP = ["download", "prep", "sft", "sweep"]  # what `medmcqa-ray sweep-all` and jobs/sweep.py run


def check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise StageError(f"output_dir {output_dir} cannot be written ({e.strerror or e})") from None


# The manifest type of each stage by its name, so a caller naming the stage reads its fields typed.
@overload
def run_stage(name: Literal["download"], cfg: Config, force: bool = ..., tracker: Optional[Tracker] = ...) -> DownloadManifest: ...
@overload
def run_stage(name: Literal["prep"], cfg: Config, force: bool = ..., tracker: Optional[Tracker] = ...) -> PrepManifest: ...
@overload
def run_stage(name: Literal["sft"], cfg: Config, force: bool = ..., tracker: Optional[Tracker] = ...) -> SFTManifest: ...
@overload
def run_stage(name: Literal["grpo"], cfg: Config, force: bool = ..., tracker: Optional[Tracker] = ...) -> GRPOManifest: ...
@overload
def run_stage(name: Literal["baseline", "eval"], cfg: Config, force: bool = ...,
              tracker: Optional[Tracker] = ...) -> EvalManifest: ...
@overload
def run_stage(name: Literal["sweep"], cfg: Config, force: bool = ..., tracker: Optional[Tracker] = ...) -> SweepManifest: ...
@overload
def run_stage(name: str, cfg: Config, force: bool = ..., tracker: Optional[Tracker] = ...) -> Manifest: ...


def run_stage(name: str, cfg: Config, force: bool = False, tracker: Optional[Tracker] = None) -> Manifest:
    """Run one stage (or skip it when its manifest matches), recorded as an MLflow run nested under the
    open pipeline run, if any."""
    stage = STAGES[name]
    check_writable(layout(cfg).root)
    cfg = resolve_adapters(cfg)  # a no-op when the CLI resolved them already
    tracker = tracker or Tracker(cfg)
    with tracker.stage_run(name):
        key = stage.cache_key(cfg)
        path = stage.manifest_path(cfg)
        previous = stage.previous(cfg)
        if not force and previous is not None and previous.config_hash == key and stage.output(cfg).is_dir():
            log.info("%s: up to date (%s matches config_hash %s); skipped, --force redoes it", name, path, key)
            tracker.set_tags({"medmcqa_ray.skipped": "true"})
            return previous.model_copy(update={"skipped": True})
        ensure_ray(cfg.ray)
        manifest = stage.run(cfg).model_copy(update={"config_hash": key})
        write_manifest(path, manifest.as_dict())
        stage.record(tracker, manifest)
        log.info("%s: done, manifest %s", name, path)
        return manifest
