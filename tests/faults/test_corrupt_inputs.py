"""Damaged files between stages and in the input: a clear error naming the file, and no partial output
marked complete (the stage's manifest stays as it was, the last good output stays in place)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medmcqa_ray.errors import DataFileError, StageError, user_error
from medmcqa_ray.pipeline import STAGES, run_stage

pytestmark = pytest.mark.slow


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def failure(stage: str, cfg, **kwargs) -> Exception:
    with pytest.raises(Exception) as e:
        run_stage(stage, cfg, **kwargs)
    return user_error(e.value) or e.value


def test_truncated_parquet_shards_and_inputs_name_the_file(ray_session, make_config, tmp_path):
    cfg = make_config("data.splits=[train,validation]")
    for stage in ("download", "prep"):
        run_stage(stage, cfg)
    data = Path(cfg.output_dir) / "data"
    prep_manifest = STAGES["prep"].manifest_path(cfg)
    prep_before = prep_manifest.read_text()

    # A formatted shard cut in half: SFT and eval name it before any worker starts; nothing is written.
    shard = sorted((data / "formatted" / "train").glob("*.parquet"))[0]
    saved = shard.read_bytes()
    truncate(shard)
    err = failure("sft", cfg)
    assert isinstance(err, DataFileError) and str(shard) in str(err) and "not a readable Parquet file" in str(err)
    assert not STAGES["sft"].manifest_path(cfg).exists() and not (Path(cfg.output_dir) / "checkpoints" / "sft").exists()
    shard.write_bytes(saved)
    val = sorted((data / "formatted" / "validation").glob("*.parquet"))[0]
    truncate(val)
    err = failure("baseline", cfg)
    assert isinstance(err, DataFileError) and str(val) in str(err)
    assert not STAGES["baseline"].manifest_path(cfg).exists()

    # A processed shard cut in half: prep (in a Ray Data task) names it; the previous formatted output
    # and prep's manifest stay as they were.
    processed = sorted((data / "processed" / "train").glob("*.parquet"))[0]
    truncate(processed)
    err = failure("prep", cfg, force=True)
    assert isinstance(err, DataFileError) and processed.name in str(err)
    assert prep_manifest.read_text() == prep_before and list((data / "formatted" / "train").glob("*.parquet"))

    # A truncated Parquet input file: download names it and keeps nothing of it.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(processed, src / "train.parquet")  # (cut in half above)
    bad = make_config("data.source=local", f"data.path={src}", "data.layout=hf", output_dir=tmp_path / "other")
    err = failure("download", bad)
    assert isinstance(err, DataFileError) and "train.parquet" in str(err)
    assert not STAGES["download"].manifest_path(bad).exists()


def test_config_naming_a_missing_adapter_fails_before_work(make_config, tmp_path):
    missing = tmp_path / "no-such-adapter"
    for stage in ("grpo", "eval"):  # adapters.sft: the adapter GRPO continues and eval's sft head
        cfg = make_config(f"adapters.sft={missing}", "eval.heads=[sft]")
        with pytest.raises(StageError, match=str(missing)):
            run_stage(stage, cfg)
        assert not STAGES[stage].manifest_path(cfg).exists() and not (Path(cfg.output_dir) / "eval").exists()
