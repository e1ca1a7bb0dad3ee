"""Shared fixtures. One Ray instance serves the whole session: starting Ray costs seconds on 2 cores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Ray Train's controller polls its workers every 2 s, so a run's end waits up to 2 s to be seen; tests
# run some fifty short ones (the Ray instances they start, and their subprocesses, inherit this).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# No usage reports from a machine without a network: with them on, every Ray instance that runs a dataset
# starts Ray Data's usage-collection actor (a process of its own, seconds of CPU on 2 cores).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train's preemption watcher (an actor process per training run) watches cloud nodes being reclaimed,
# which a test machine never sees; the tests start some forty training runs.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDMCQA = REPO.parent / "shared" / "medmcqa"


def state_api() -> dict:
    """Ray state API arguments for this process's cluster: named explicitly, because with no address the
    state API picks the newest Ray cluster on the machine, and tests start others (jobs, sweeps)."""
    import ray

    return {"address": ray.get_runtime_context().gcs_address, "raise_on_missing_output": False}


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # The dashboard serves Ray's state API, which tests use to check where work ran.
        # 6 logical CPUs on 2 cores: in GRPO the learner, rollout and reward actors take turns.
        ray.init(address="local", num_cpus=6, include_dashboard=True, log_to_driver=False)
    from medmcqa_ray.runtime import configure_ray_data

    configure_ray_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def toy_sft(ray_session, tmp_path_factory) -> tuple[Path, list[str]]:
    """An output_dir holding the toy data, downloaded, prepped and fine-tuned (SmolLM2, tests/toy.py),
    with the overrides that made it: later stages run into it and skip what is done."""
    from medmcqa_ray.config import load_config
    from medmcqa_ray.pipeline import run_stage

    from .toy import toy_data, toy_overrides

    out = tmp_path_factory.mktemp("toy-out")
    overrides = toy_overrides(toy_data(tmp_path_factory.mktemp("toy") / "data"))
    # MLflow on for these stages only (test_sft.py reads the SFT curves); later stages choose for themselves.
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *overrides, "tracking.enabled=true"])
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    return out, overrides


CI_SFT = ["sft.max_steps=2", "sft.save_steps=2"]


@pytest.fixture(scope="session")
def ci_sft(ray_session, tmp_path_factory) -> Path:
    """An output_dir holding configs/ci.yaml's synthetic rows, downloaded and prepped, and a 2-step SFT
    adapter of the tiny model (CI_SFT), made once: tests that start from an SFT adapter take a copy
    (`sft_copy`) and run their own later stages into it."""
    from medmcqa_ray.config import load_config
    from medmcqa_ray.pipeline import run_stage

    out = tmp_path_factory.mktemp("ci-sft") / "out"
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *CI_SFT])
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    return out


def sft_copy(ci_sft: Path, dest: Path) -> Path:
    """A test's own output_dir, holding what `ci_sft` made."""
    shutil.copytree(ci_sft, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def shared_medmcqa() -> Path:
    if not SHARED_MEDMCQA.is_dir():
        pytest.skip(f"real MedMCQA rows not found at {SHARED_MEDMCQA} (../shared/medmcqa beside the repo)")
    return SHARED_MEDMCQA


@pytest.fixture
def make_config(tmp_path):
    """load_config over configs/ci.yaml with output_dir in a temporary folder, plus overrides."""
    from medmcqa_ray.config import load_config

    def _make(*overrides: str, output_dir: Path | None = None):
        out = output_dir or tmp_path / "out"
        return load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *overrides])

    return _make
