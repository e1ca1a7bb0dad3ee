"""Find the input files of a source, cut them into read tasks, and read one task's raw rows.

Sources: `local` files (JSON lines, JSON array, Parquet; original or Hugging Face layout), `hub`
(datasets.load_dataset, written once to Parquet and then read like local files), and two bundled with
the package: `sample` (real MedMCQA rows, data/medmcqa_sample/) and `synthetic` (questions written for
this project with a known answer rule, data/synthetic_sample.py). A read task is a byte range of a JSON-lines file, one
Parquet row group, or one JSON array file, so Ray Data can parse a large file on every core.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import DataSection
from medmcqa_ray.errors import DataFileError, HubUnavailableError

DATA_SUFFIXES = {".jsonl", ".ndjson", ".json", ".parquet"}
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}
SAMPLE_DIR = Path(__file__).parent / "medmcqa_sample"
SAMPLE_NAME = "the MedMCQA sample"
SYNTHETIC_DIR = Path(__file__).parent / "synthetic"
SYNTHETIC_NAME = "the synthetic sample"
BUNDLED = {"sample": SAMPLE_DIR, "synthetic": SYNTHETIC_DIR}
ORDINAL_FILE_SHIFT = 2**32  # ordinal = file index * 2**32 + row number: file order, then row order


@dataclass(frozen=True)
class ReadTask:
    kind: str  # "jsonl" | "json_array" | "parquet"
    path: str
    split: str
    file_index: int
    start: int = 0  # jsonl: byte offset; parquet: row group
    end: int = -1  # jsonl: byte offset (exclusive)
    first_row: int = 1  # jsonl: line number of `start`; parquet: row index of the group's first row


def split_of(path: Path) -> str | None:
    """train.jsonl, dev.json, validation-00000-of-00001.parquet -> the split they hold."""
    for token in re.split(r"[^a-z]+", path.stem.lower()):
        if token in SPLIT_ALIASES:
            return SPLIT_ALIASES[token]
    return None


def discover(root: Path, wanted: Sequence[str]) -> list[tuple[Path, str]]:
    """(file, split) pairs under a folder or for one file, in a stable order."""
    if root.is_file():
        candidates = [root]
    else:
        candidates = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    found = []
    for path in candidates:
        split = split_of(path)
        if split is None:
            raise DataFileError(
                f"{path}: cannot tell which split this file holds; name it train/validation/dev/test "
                "(e.g. train.jsonl, dev.json, validation-00000.parquet)"
            )
        if split in wanted:
            found.append((path, split))
    if not found:
        raise DataFileError(f"{root}: no data files for splits {wanted} (looked for {sorted(DATA_SUFFIXES)})")
    return found


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(4096), b""):
            stripped = block.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _jsonl_tasks(path: Path, split: str, file_index: int, chunk_bytes: int) -> Iterator[ReadTask]:
    """Byte ranges ending at line ends, with the line number each starts at (mmap: the driver never
    holds the file in memory)."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start, line = 0, 1
        while start < size:
            end = data.find(b"\n", min(start + chunk_bytes, size) - 1)
            end = size if end == -1 else end + 1
            yield ReadTask("jsonl", str(path), split, file_index, start, end, line)
            line += data[start:end].count(b"\n")
            start = end


def plan_read_tasks(files: list[tuple[Path, str]], chunk_bytes: int) -> list[ReadTask]:
    tasks: list[ReadTask] = []
    for file_index, (path, split) in enumerate(files):
        if path.suffix.lower() == ".parquet":
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as e:  # pyarrow raises several types for a damaged file
                raise DataFileError(f"{path}: not a readable Parquet file ({e})") from e
            first = 0
            for group in range(meta.num_row_groups):
                tasks.append(ReadTask("parquet", str(path), split, file_index, group, -1, first))
                first += meta.row_group(group).num_rows
        elif path.suffix.lower() == ".json" and _first_byte(path) == b"[":
            # .json is an array or, as in the original MedMCQA release, JSON lines; .jsonl is always lines.
            tasks.append(ReadTask("json_array", str(path), split, file_index))
        else:
            tasks.extend(_jsonl_tasks(path, split, file_index, chunk_bytes))
    return tasks


def read_task_rows(task: ReadTask) -> Iterator[tuple[Any, str, int]]:
    """(raw row, source "file:line" or "file#row", ordinal). Malformed files raise DataFileError."""
    base = task.file_index * ORDINAL_FILE_SHIFT
    if task.kind == "parquet":
        try:
            rows = pq.ParquetFile(task.path).read_row_group(task.start).to_pylist()
        except Exception as e:
            raise DataFileError(f"{task.path}: row group {task.start} cannot be read ({e})") from e
        for i, row in enumerate(rows, start=task.first_row):
            yield row, f"{task.path}#{i}", base + i
    elif task.kind == "json_array":
        try:
            rows = json.loads(Path(task.path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataFileError(f"{task.path}:{e.lineno}: invalid JSON ({e.msg})") from e
        except UnicodeDecodeError as e:
            raise DataFileError(f"{task.path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        if not isinstance(rows, list):
            raise DataFileError(f"{task.path}: expected a JSON array of rows or JSON lines")
        for i, row in enumerate(rows):
            yield row, f"{task.path}#{i}", base + i
    else:
        with open(task.path, "rb") as f:
            f.seek(task.start)
            chunk = f.read(task.end - task.start)
        for offset, line in enumerate(chunk.split(b"\n")):
            lineno = task.first_row + offset
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except UnicodeDecodeError as e:
                raise DataFileError(f"{task.path}:{lineno}: not UTF-8 text ({e.reason})") from e
            except json.JSONDecodeError as e:
                raise DataFileError(f"{task.path}:{lineno}: invalid JSON ({e.msg}; truncated line?)") from e
            yield row, f"{task.path}:{lineno}", base + lineno


# ------------------------------------------------------------------------------------------- sources


def fingerprint(files: list[tuple[Path, str]], by_content: bool = False) -> str:
    """Changes when a file is added, removed or rewritten (size and mtime; content for bundled files)."""
    h = hashlib.sha256()
    for path, split in files:
        st = path.stat()
        h.update(f"{path}|{split}|{st.st_size}".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest() if by_content else str(st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def fetch_hub(cfg: DataSection, cache_dir: Path) -> Path:
    """datasets.load_dataset(hub_id) -> one Parquet file per split under cache_dir (read like local files).

    `hub_id` may also be a local dataset folder, which is how this path is tested offline."""
    local = Path(cfg.hub_id).exists()
    token = cfg.hub_token.get_secret_value() if cfg.hub_token else None
    if not local:
        hint = "use data.source=local with data.path=<folder of MedMCQA files>, or data.source=sample"
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise HubUnavailableError(f"HF_HUB_OFFLINE is set, so {cfg.hub_id} cannot be downloaded; {hint}")
        from huggingface_hub import HfApi

        try:  # a quick probe, so an unreachable hub fails in seconds rather than after retries
            HfApi().dataset_info(cfg.hub_id, revision=cfg.hub_revision, token=token, timeout=10)
        except Exception as e:
            raise HubUnavailableError(f"cannot reach the Hugging Face hub for {cfg.hub_id} ({type(e).__name__}); {hint}") from None
    import datasets

    dsd = datasets.load_dataset(cfg.hub_id, revision=cfg.hub_revision, token=token)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, split_ds in dsd.items():
        split = SPLIT_ALIASES.get(name)
        if split in cfg.splits:
            split_ds.to_parquet(str(cache_dir / f"{split}.parquet"))
    return cache_dir


def source_key(cfg: DataSection) -> str:
    """What the download stage's cache compares: changes when the input files would."""
    if cfg.source in BUNDLED:
        return fingerprint(discover(BUNDLED[cfg.source], cfg.splits), by_content=True)
    if cfg.source == "hub":
        return f"{cfg.hub_id}@{cfg.hub_revision or 'default'}"
    return fingerprint(discover(cfg.local_path(), cfg.splits))


class SourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    split: str


class SourceInfo(BaseModel):
    """Where the download stage's rows came from, as its manifest says: the source, then (set by the stage
    once it has read them) the layout detected and every file with its split."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sample", "synthetic", "hub", "local"]
    name: str
    note: Optional[str] = None
    revision: Optional[str] = None
    """hub: data.hub_revision."""
    path: Optional[str] = None
    """local: data.path."""
    layout: Optional[str] = None
    """The release's (1-based `cop`) or Hugging Face's (0-based), as detected or forced."""
    files: list[SourceFile] = []


def resolve_source(cfg: DataSection, hub_download: Path) -> tuple[list[tuple[Path, str]], SourceInfo]:
    """The files to read (for source=hub, downloaded into `hub_download` first) and the manifest's description."""
    if cfg.source == "sample":
        info = SourceInfo(kind="sample", name=SAMPLE_NAME,
                          note="real MedMCQA rows (Pal et al., CHIL 2022; MIT licence): 2,229 train, 344 validation, 83 test")
        return discover(SAMPLE_DIR, cfg.splits), info
    if cfg.source == "synthetic":
        info = SourceInfo(kind="synthetic", name=SYNTHETIC_NAME,
                          note="multiple-choice questions written for medmcqa-ray in MedMCQA's schema; not MedMCQA")
        return discover(SYNTHETIC_DIR, cfg.splits), info
    if cfg.source == "hub":
        root = fetch_hub(cfg, hub_download)
        info = SourceInfo(kind="hub", name=f"MedMCQA ({cfg.hub_id})", revision=cfg.hub_revision)
    else:
        root = cfg.local_path()
        info = SourceInfo(kind="local", name="MedMCQA (local files)", path=str(root))
    return discover(root, cfg.splits), info


def task_dict(task: ReadTask) -> dict:
    return asdict(task)
