"""Sending the offline journal (records kept while the store was unreachable) to a tracking store."""

from __future__ import annotations

import contextlib
import logging
import shutil
from typing import Optional

from pydantic import ValidationError

from medmcqa_ray.config import Config
from medmcqa_ray.redaction import redact_uri
from medmcqa_ray.tracking.calls import OfflineRecord, StartRun
from medmcqa_ray.tracking.store import (
    OFFLINE_PREFIX,
    RegistrationRefused,
    TrackingUnavailableError,
    client_env,
    experiment_id,
    make_client,
    offline_dir,
    reachable,
    send,
    tracking_uri,
)

# The package's name, not this module's: users and tests filter tracking warnings on "medmcqa_ray.tracking".
log = logging.getLogger("medmcqa_ray.tracking")


def replay_offline(cfg: Config, target_uri: Optional[str] = None) -> int:
    """Send offline records to `target_uri` (default: the config's store), creating their runs.

    Returns how many records were sent; the replayed files move to `offline/replayed/`. A run that was
    live before the server died is continued when the target still has it.
    """
    folder = offline_dir(cfg)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        return 0
    uri = target_uri or tracking_uri(cfg)
    if not reachable(uri):
        raise TrackingUnavailableError(f"tracking server {redact_uri(uri)} is unreachable; offline records kept in {folder}")
    records: list[OfflineRecord] = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            try:
                records.append(OfflineRecord.model_validate_json(line))
            except ValidationError:  # a line cut short by a killed process
                log.warning("tracking: %s:%d is not a complete record; skipped", f, n)
    records.sort(key=lambda r: r.timestamp)  # stable: a parent's start precedes its children's
    first: dict[str, OfflineRecord] = {}
    for r in records:
        first.setdefault(r.run, r)
    ids: dict[str, Optional[str]] = {}
    experiments: dict[str, str] = {}
    with client_env():
        client = make_client(uri)

        def resolve(key: Optional[str]) -> Optional[str]:
            if key is None or key in ids:
                return ids.get(key) if key else None
            ids[key] = None
            if not key.startswith(OFFLINE_PREFIX):  # a run that was live before the server died
                with contextlib.suppress(Exception):
                    ids[key] = client.get_run(key).info.run_id
            if ids[key] is None and key in first:
                r = first[key]
                if r.experiment not in experiments:
                    experiments[r.experiment] = experiment_id(client, uri, r.experiment)
                start = r.call()
                tags = dict(start.tags) if isinstance(start, StartRun) else {}
                parent = resolve(r.parent)
                if parent:
                    tags["mlflow.parentRunId"] = parent
                ids[key] = client.create_run(experiments[r.experiment], start_time=int(r.timestamp * 1000),
                                             tags=tags, run_name=r.name).info.run_id
            return ids[key]  # None: a parent the target never had; the child becomes top-level

        for r in records:
            run_id = resolve(r.run)
            call = r.call()
            if not isinstance(call, StartRun) and run_id is not None:
                try:
                    send(client, run_id, call)
                except RegistrationRefused as e:
                    log.warning("tracking: %s; the run's artifacts are logged", e)
    done = folder / "replayed"
    done.mkdir(exist_ok=True)
    for f in files:
        for path in (f, f.with_suffix(".files")):
            if path.exists():
                shutil.move(str(path), str(done / path.name))
    return len(records)

