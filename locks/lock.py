"""Writes the locked dependency sets with uv's resolver: `python locks/lock.py` (all) or `... cpu gpu`.

Each set is resolved for its target platform and Python, from pyproject.toml's extras, against the
packages published before EXCLUDE_NEWER. The registry can still list a release later with an earlier
upload time, so tests/test_locks.py re-resolves each set constrained by its lock and compares:
pyproject.toml's ranges must hold the locked pins, and no dependency may be added or dropped without
`make lock`. `make setup` installs locks/cpu.txt.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LOCKS = Path(__file__).resolve().parent
REPO = LOCKS.parent
EXCLUDE_NEWER = "2026-11-29T00:00:00Z"
CPU_WHEELS = Path("/opt/wheels")
"""Where this kind of machine keeps the CPU torch (torch==2.13.0+cpu is not on PyPI). Elsewhere, set
UV_TORCH_BACKEND=cpu, or point UV_EXTRA_INDEX_URL at PyTorch's CPU wheel index with
UV_INDEX_STRATEGY=unsafe-best-match (uv's default takes every package that index carries from it alone)."""


@dataclass(frozen=True)
class LockSet:
    name: str
    extras: tuple[str, ...]
    python: str
    platform: str
    excludes: bool = False
    find_links: bool = False

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.name}.txt"


SETS = {
    # What `make setup` installs: this machine's Python, the real vLLM for CPU.
    "cpu": LockSet("cpu", ("cpu", "dev"), "3.11", "x86_64-manylinux_2_28", excludes=True, find_links=True),
    # The Dockerfile's set (rayproject/ray:2.60.0-py311-gpu): vLLM for CUDA with the torch it pins.
    "gpu": LockSet("gpu", ("gpu", "dev"), "3.11", "x86_64-manylinux_2_28"),
    # The same set for Python 3.12: Ubuntu 24.04's python3, which cluster/aws.yaml's GPU nodes run.
    "gpu-py312": LockSet("gpu-py312", ("gpu", "dev"), "3.12", "x86_64-manylinux_2_28"),
}


def compile_command(lock: LockSet, output: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "uv", "pip", "compile", str(REPO / "pyproject.toml"),
           "--python-version", lock.python, "--python-platform", lock.platform,
           "--exclude-newer", EXCLUDE_NEWER, "--no-header", "--quiet"]
    for name in lock.extras:
        cmd += ["--extra", name]
    if lock.excludes:
        cmd += ["--excludes", str(LOCKS / "excludes.txt")]
    if lock.find_links and CPU_WHEELS.is_dir():
        cmd += ["--find-links", str(CPU_WHEELS)]
    cmd += list(extra)
    cmd += ["-o", str(output)] if output else ["--no-annotate"]
    return cmd


def resolve(lock: LockSet, output: Path | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # Relative paths in uv's output (the `-r pyproject.toml` annotations) stay the same wherever it runs.
    env = os.environ | {"UV_CUSTOM_COMPILE_COMMAND": "python locks/lock.py"}
    return subprocess.run(compile_command(lock, output, extra), cwd=REPO, env=env, capture_output=True, text=True)


def pins(text: str) -> dict[str, str]:
    """name -> version of a requirements file's `name==version` lines."""
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            out[name.strip().lower()] = version.split(";")[0].strip()
    return out


def main(names: list[str]) -> int:
    for name in names or list(SETS):
        done = resolve(SETS[name], SETS[name].path)
        if done.returncode:
            sys.stderr.write(done.stderr)
            return done.returncode
        print(f"{SETS[name].path.relative_to(REPO)}: {len(pins(SETS[name].path.read_text()))} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
