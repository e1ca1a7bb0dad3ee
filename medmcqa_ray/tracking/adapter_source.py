"""Adapters named by MLflow URI: `adapters.sft` / `adapters.grpo` = `models:/NAME@ALIAS`,
`models:/NAME/VERSION` or `runs:/RUN_ID/PATH`. Each is pinned (an alias to the version it names now),
downloaded once into output_dir/adapters/ (layout.fetched_adapter) and replaced in the config by that
local PEFT folder, on the driver before any stage starts: every stage and every Ray worker then reads a
local folder, and a moved alias is a new folder, so the stages that used the old one run again.

`medmcqa-ray grpo adapters.sft=models:/medmcqa-ray-sft@best` continues the best SFT head."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Config
from medmcqa_ray.config.schema import MLFLOW_ADAPTER_SCHEMES
from medmcqa_ray.errors import StageError
from medmcqa_ray.layout import layout
from medmcqa_ray.redaction import redact_uri
from medmcqa_ray.tracking.store import client_env, make_client, tracking_uri

SOURCE_FILE = "source.json"
HEADS = ("sft", "grpo")


class FetchedAdapter(BaseModel):
    """Where a fetched adapter came from (source.json beside it)."""

    model_config = ConfigDict(extra="forbid")
    uri: str
    """As configured (an alias is kept here, the version it named in `resolved`)."""
    resolved: str
    """models:/NAME/VERSION or runs:/RUN_ID/PATH."""
    run_id: str
    version: Optional[str] = None
    adapter_sha: str


def is_mlflow_uri(value: Optional[str]) -> bool:
    return value is not None and str(value).startswith(MLFLOW_ADAPTER_SCHEMES)


def resolve_adapters(cfg: Config) -> Config:
    """`cfg` with every adapters.<head> that is an MLflow URI replaced by its fetched local folder (the
    same config when there is none). Fails before any work, naming the key, for an unknown model, alias,
    version or run, or an artifact that holds no PEFT adapter."""
    updates = {head: str(fetch(cfg, head, value)) for head in HEADS
               if is_mlflow_uri(value := getattr(cfg.adapters, head))}
    if not updates:
        return cfg
    return cfg.model_copy(update={"adapters": cfg.adapters.model_copy(update=updates)})


def fetch(cfg: Config, head: str, uri: str) -> Path:
    """The local folder of the adapter `uri` names (downloaded on first use)."""
    key = f"adapters.{head}={uri}"
    store = tracking_uri(cfg)
    client = make_client(store)
    with client_env():
        resolved, run_id, version, download_uri = _pin(client, key, uri, store)
        dest = layout(cfg).fetched_adapter(resolved)
        if (dest / SOURCE_FILE).is_file():
            return dest / "adapter"
        import mlflow.artifacts

        from medmcqa_ray.adapters import adapter_checksum, read_adapter

        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(tmp), tracking_uri=store))
            found = sorted(p.parent for p in local.rglob("adapter_config.json")) if local.is_dir() else []
            if len(found) != 1:
                names = sorted(p.name for p in local.iterdir()) if local.is_dir() else [local.name]
                raise StageError(f"{key}: {resolved} holds {len(found) or 'no'} PEFT adapter folders "
                                 f"(with adapter_config.json); it has {names}")
            record = FetchedAdapter(uri=uri, resolved=resolved, run_id=run_id, version=version,
                                    adapter_sha=adapter_checksum(read_adapter(found[0])[1]))
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            found[0].rename(dest / "adapter")
            (dest / SOURCE_FILE).write_text(record.model_dump_json(indent=2))  # last: the folder is complete
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / "adapter"


def fetched_source(adapter: Path) -> Optional[FetchedAdapter]:
    """Where an adapter folder came from, when it was fetched from MLflow."""
    source = Path(adapter).parent / SOURCE_FILE
    return FetchedAdapter.model_validate(json.loads(source.read_text())) if source.is_file() else None


def _pin(client: Any, key: str, uri: str, store: str) -> tuple[str, str, Optional[str], str]:
    """(resolved URI, run id, version, URI to download) for a models:/ or runs:/ URI."""
    from mlflow.exceptions import MlflowException

    where = f"in the tracking store {redact_uri(store)}"
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        if not run_id or not path:
            raise StageError(f"{key}: expected runs:/RUN_ID/PATH")
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise StageError(f"{key}: no run {run_id} {where}") from None
        parent = path.rstrip("/").rpartition("/")[0] or None
        if path.rstrip("/") not in {a.path for a in client.list_artifacts(run_id, parent)}:
            top = sorted(a.path for a in client.list_artifacts(run_id))
            raise StageError(f"{key}: run {run_id} has no artifact {path!r} (its artifacts: {top})")
        return uri, run_id, None, f"{run.info.artifact_uri.rstrip('/')}/{path}"
    name, at, alias = uri.removeprefix("models:/").partition("@")
    version = None
    if not at:
        name, _, version = name.partition("/")
        if not version or not version.isdigit():
            raise StageError(f"{key}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise StageError(f"{key}: no registered model {name!r} {where} (registered: {names})") from None
    try:
        mv = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, version)
    except MlflowException:
        if at:
            raise StageError(f"{key}: registered model {name!r} has no alias {alias!r} "
                             f"(aliases: {sorted(registered.aliases)})") from None
        raise StageError(f"{key}: registered model {name!r} has no version {version}") from None
    return f"models:/{name}/{mv.version}", mv.run_id, str(mv.version), client.get_model_version_download_uri(name, mv.version)
