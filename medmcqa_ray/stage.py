"""The stage contract. Each stage module (data/download.py, data/prep.py, training/sft.py, training/grpo.py,
evaluation/stage.py, tuning/stage.py) defines a `Stage` subclass that declares what it reads, what it writes,
its cache key, and `run()` returning its typed `Manifest`; the manifest knows its own MLflow metrics and
its console table. pipeline.py runs any stage through this contract alone.

A stage is skipped when its manifest on disk carries the cache key the config gives now (the hash of the
config sections it reads and of its inputs' identity) and its output is there.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Iterator, Optional, TypeVar

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Config
from medmcqa_ray.manifest import read_manifest

if TYPE_CHECKING:
    from medmcqa_ray.tracking import Tracker


class Manifest(BaseModel):
    """What a stage wrote, from which inputs: `<stage>_manifest.json`. Subclasses declare their fields, read as
    attributes (`m.adapter`); `as_dict()` is the JSON."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    config_hash: str = ""
    skipped: bool = False

    def metrics(self) -> dict[str, float]:
        """The stage's figures for MLflow (one value each)."""
        return {}

    def step_metrics(self) -> Iterator[tuple[int, dict[str, float]]]:
        """Per-step figures (a trainer's log history), as (step, {name: value})."""
        return iter(())

    def params(self) -> dict[str, Any]:
        """MLflow params only known once the stage ran (say, which similarity scorer loaded)."""
        return {}

    def artifacts(self) -> list[tuple[Path, str]]:
        """Files to log with the stage's run: (path, artifact folder)."""
        return []

    def adapter_model(self) -> Optional[tuple[str, Path]]:
        """(head, adapter folder) of the adapter this stage trained, logged and registered as an MLflow model."""
        return None

    def table(self) -> str:
        """A short human summary for the console."""
        return ""

    def as_dict(self) -> dict[str, Any]:
        """The manifest as its JSON file holds it."""
        return self.model_dump(mode="json")


ManifestT = TypeVar("ManifestT", bound=Manifest)


class Stage(ABC, Generic[ManifestT]):
    """A stage writing manifests of type ManifestT: `previous` reads one back as that type, so its fields are typed."""

    name: ClassVar[str]
    # Not a ClassVar only because a ClassVar cannot hold a type variable; each subclass sets it on the class.
    manifest_type: type[ManifestT]

    @abstractmethod
    def inputs(self, cfg: Config) -> list[Path]:
        """What the stage reads (another stage's output, or files the config names)."""

    @abstractmethod
    def output(self, cfg: Config) -> Path:
        """The folder the stage writes; a missing one means the stage runs again."""

    @abstractmethod
    def manifest_path(self, cfg: Config) -> Path: ...

    @abstractmethod
    def cache_key(self, cfg: Config) -> str: ...

    @abstractmethod
    def run(self, cfg: Config) -> ManifestT: ...

    def previous(self, cfg: Config) -> Optional[ManifestT]:
        """The manifest on disk, if it is one this stage can read."""
        data = read_manifest(self.manifest_path(cfg))
        if data is None:
            return None
        try:
            return self.manifest_type.model_validate(data)
        except ValueError:  # written by an older version: run again
            return None

    def record(self, tracker: "Tracker", manifest: ManifestT) -> None:
        """Log the manifest in the stage's MLflow run."""
        tracker.log_metrics(manifest.metrics())
        for step, values in manifest.step_metrics():
            tracker.log_metrics({f"{self.name}/{k}": v for k, v in values.items()}, step=step)
        if params := manifest.params():
            tracker.log_params(params)
        tracker.log_dict(manifest.as_dict(), f"{self.name}_manifest.json")
        for path, folder in manifest.artifacts():
            tracker.log_artifact(path, folder)
        if model := manifest.adapter_model():
            tracker.log_adapter_model(*model)


def hash_parts(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def upstream_key(manifest: Path) -> str:
    """The cache key recorded in another stage's manifest: a stage's own key includes it, so a changed
    upstream makes it run again."""
    return str((read_manifest(manifest) or {}).get("config_hash"))


def fingerprint(path: Path) -> str:
    """Identity of a folder's files (names, sizes, modification times), or of one file."""
    path = Path(path)
    files = sorted(path.glob("*")) if path.is_dir() else ([path] if path.is_file() else [])
    return "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def history_steps(history: list[dict]) -> Iterator[tuple[int, dict[str, float]]]:
    """A trainer's log history as step metrics: each entry's numbers at its step."""
    for entry in history:
        step = entry.get("step")
        if step is not None:
            yield step, {k: v for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"}


def steps_logging(history: list[dict], metric: str) -> list[dict[str, float]]:
    """The step metrics of the history's entries that log `metric` (metric_names.TIMING_STEP, CORRECT, ...):
    the training steps, without the end-of-training summary."""
    return [values for _, values in history_steps(history) if metric in values]
