"""Where every output lives under `output_dir`: the one module that builds those paths.

```
output_dir/
  data/raw/hub/                      the hub dataset's download (data.source=hub)
  data/processed/<split>/*.parquet   normalised rows          (download; `selection` is carved from train)
  data/quarantine/<split>.jsonl      rows set aside, with why (download)
  data/manifest.json                 download's manifest
  data/formatted/<split>/*.parquet   prompts and SFT targets  (prep)
  data/formatted/manifest.json       prep's manifest
  checkpoints/<stage>/               the final adapter of sft and grpo, training_info.json in it
  checkpoints/<stage>_manifest.json  their manifests; <stage>_journal.jsonl beside them
  checkpoints/ray/                   Ray Train's checkpoints (scaling.storage_path moves them)
  adapters/<source>/adapter/         an adapter fetched from MLflow (adapters.<head>=models:/...), source.json beside it
  eval/                              baseline and eval (eval.out_dir moves it)
  export/<head>/                     `export`'s merged Hugging Face model folder (--out moves it)
  sweeps/<sweep.name>/               a sweep: manifest.json, tune/ (Tune's experiment), trials/<id>/, best.yaml
  logs/<command>-<time>.log          the console log of each command
  mlflow.db, mlartifacts/            the embedded MLflow store
  tracking/offline/                  MLflow calls kept while the tracking server was unreachable
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from medmcqa_ray.config import Config

Head = Literal["base", "sft", "grpo"]
# The split carved from train for choosing (sweeps, checkpoints): data.selection_rows.
SELECTION = "selection"


class Layout:
    """The paths of one config's outputs. Paths in the config are absolute already (resolved at load)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = Path(cfg.output_dir)

    # ------------------------------------------------------------------------------------------ data
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def hub_download(self) -> Path:
        return self.data / "raw" / "hub"

    @property
    def processed_root(self) -> Path:
        return self.data / "processed"

    def processed(self, split: str) -> Path:
        return self.processed_root / split

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def data_manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def formatted_root(self) -> Path:
        return self.data / "formatted"

    def formatted(self, split: str) -> Path:
        return self.formatted_root / split

    @property
    def formatted_manifest(self) -> Path:
        return self.formatted_root / "manifest.json"

    # ----------------------------------------------------------------------------------- training
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def trained_adapter(self, stage: Literal["sft", "grpo"]) -> Path:
        """Where the sft or grpo stage writes its final adapter."""
        return self.checkpoints / stage

    def training_manifest(self, stage: Literal["sft", "grpo"]) -> Path:
        return self.checkpoints / f"{stage}_manifest.json"

    @property
    def ray_storage(self) -> str:
        """Ray Train's checkpoint store: a folder, or a URI (s3://...) from scaling.storage_path."""
        return self.cfg.scaling.storage_path or str(self.checkpoints / "ray")

    def fetched_adapter(self, resolved: str) -> Path:
        """The folder an MLflow adapter (models:/NAME/VERSION, runs:/ID/PATH) is fetched into: one per
        version, so a moved alias is another folder."""
        import re

        return self.root / "adapters" / re.sub(r"[^A-Za-z0-9._-]+", "_", resolved).strip("_")

    def configured_adapter(self, head: Literal["sft", "grpo"]) -> Optional[Path]:
        """The adapter named in the config (adapters.<head>), if any: a folder once the pipeline resolved
        an MLflow URI (tracking/adapter_source.py)."""
        path = getattr(self.cfg.adapters, head)
        return Path(path) if path is not None else None

    def adapter(self, head: Literal["sft", "grpo"]) -> Path:
        """The adapter a head uses: adapters.<head>, else this pipeline's own checkpoint. GRPO continues
        `adapter("sft")`; eval scores both."""
        return self.configured_adapter(head) or self.trained_adapter(head)

    # ----------------------------------------------------------------------------------- evaluation
    @property
    def eval_dir(self) -> Path:
        return Path(self.cfg.eval.out_dir or self.root / "eval")

    def eval_manifest(self, file: str) -> Path:
        """baseline's and eval's manifests (each stage names its file) in the eval folder."""
        return self.eval_dir / file

    @property
    def eval_input(self) -> Path:
        """eval.input, else this pipeline's formatted eval.split."""
        return Path(self.cfg.eval.input or self.formatted(self.cfg.eval.split))

    # ---------------------------------------------------------------------------------- the rest
    def export_dir(self, head: Literal["sft", "grpo"]) -> Path:
        """Where `medmcqa-ray export --head <head>` writes the merged model unless --out names a folder."""
        return self.root / "export" / head

    @property
    def sweep_dir(self) -> Path:
        return self.root / "sweeps" / self.cfg.sweep.name

    @property
    def sweep_manifest(self) -> Path:
        return self.sweep_dir / "manifest.json"

    @property
    def sweep_tune(self) -> Path:
        """Tune's experiment folder (its storage_path), which Tuner.restore resumes."""
        return self.sweep_dir / "tune"

    def sweep_trial(self, trial_id: str) -> Path:
        """A trial's own folder: its MLflow run reference."""
        return self.sweep_dir / "trials" / trial_id

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def offline_tracking(self) -> Path:
        return self.root / "tracking" / "offline"


def layout(cfg: Config) -> Layout:
    return Layout(cfg)


# A learner's files beside its final adapter: built from the folder the worker was given, since a Ray Train
# worker has the adapter's path, not a Layout.
TRAINING_INFO = "training_info.json"


def training_info_file(final_dir: Path | str) -> Path:
    """Rank 0's record inside the final adapter: the log history and where the run resumed."""
    return Path(final_dir) / TRAINING_INFO


def journal_file(final_dir: Path | str) -> Path:
    """checkpoints/<stage>_journal.jsonl, beside the final adapter."""
    return Path(final_dir).with_name(f"{Path(final_dir).name}_journal.jsonl")
