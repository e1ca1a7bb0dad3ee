"""Stage manifests: what a stage wrote, from which inputs. Written last and atomically, so a manifest
on disk always describes a finished output; a matching one lets the stage be skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def read_manifest(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(path: Path, manifest: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
