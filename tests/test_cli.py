"""The console script as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

CLI = [sys.executable, "-m", "medmcqa_ray.cli"]


def run_cli(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_config_prints_resolved_config_with_secrets_redacted():
    r = run_cli("config", "--config", "configs/local.yaml", "data.hub_token=hf_verysecret", "data.limit=9")
    assert r.returncode == 0, r.stderr
    assert "limit: 9" in r.stdout and "hub_token: '***'" in r.stdout
    assert "hf_verysecret" not in r.stdout + r.stderr


def test_bad_key_fails_before_any_work_naming_it(tmp_path):
    r = run_cli("all", "--config", "configs/local.yaml", f"output_dir={tmp_path / 'o'}", "data.limt=3")
    assert r.returncode == 2
    assert "data.limt: unknown key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir_is_a_clear_error_before_any_work():
    r = run_cli("download", "--config", "configs/ci.yaml", "output_dir=/proc/medmcqa-nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "output_dir /proc/medmcqa-nope cannot be written" in r.stderr


@pytest.mark.slow
def test_download_then_prep_on_real_rows(tmp_path, shared_medmcqa):
    args = ["--config", "configs/local.yaml", f"output_dir={tmp_path / 'o'}", "data.source=local",
            f"data.path={shared_medmcqa / 'hf'}"]
    r = run_cli("download", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "image_only_option=9" in r.stdout  # the summary table names the top reasons
    r = run_cli("prep", *args, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    prep = json.loads(r.stdout[r.stdout.index("[\n"):])[0]
    assert prep["splits"]["validation"]["rows"] == 344
    assert sorted(p.name for p in (tmp_path / "o" / "data" / "formatted").iterdir()) == [
        "manifest.json", "selection", "test", "train", "validation"]  # (a re-run skipping stages: tests/test_jobs.py)


@pytest.mark.slow
def test_malformed_file_error_names_file_and_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.jsonl").write_text('{"id": "a", "question": "q", "opa": "1", "opb": "2", "opc": "3", "opd": "4", "cop": 0}\n{"id": "b", "que\n')
    r = run_cli("download", "--config", "configs/ci.yaml", f"output_dir={tmp_path / 'o'}", "data.source=local", f"data.path={src}")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("medmcqa-ray: error:") and "train.jsonl:2: invalid JSON" in last
    assert not (Path(tmp_path) / "o" / "data" / "manifest.json").exists()


def test_every_stage_is_a_cli_command():
    from medmcqa_ray.cli import COMMANDS
    from medmcqa_ray.pipeline import STAGES

    assert set(STAGES) <= set(COMMANDS)
