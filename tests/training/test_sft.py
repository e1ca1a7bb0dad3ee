"""LoRA SFT on Ray Train with the tiny model: it learns, the adapter is a real PEFT adapter, base weights
stay put, metrics reach MLflow, and an interrupted run resumes from its checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from medmcqa_ray.errors import StageError
from medmcqa_ray.pipeline import run_stage

from ..conftest import REPO
from .interrupt import kill_after_first_checkpoint_and_rerun


def config(out: Path, *overrides: str):
    from medmcqa_ray.config import load_config

    return load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *overrides])


@pytest.mark.slow
def test_sft_learns_and_writes_a_peft_adapter(ray_session, tmp_path):
    from mlflow import MlflowClient
    from peft import PeftModel

    from medmcqa_ray.models import load_model
    from medmcqa_ray.tracking import tracking_uri

    cfg = config(tmp_path / "out", "sft.max_steps=24", "tracking.enabled=true")
    run_stage("download", cfg)
    run_stage("prep", cfg)
    m = run_stage("sft", cfg)
    assert m["last_loss"] < m["first_loss"] - 0.05, (m["first_loss"], m["last_loss"])
    adapter = Path(cfg.output_dir) / "checkpoints" / "sft"
    base = load_model(cfg.model, "cpu")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, adapter)
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: training moved it
    for name, tensor in tuned.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name and clean in before:
            assert torch.equal(tensor, before[clean]), name  # base weights unchanged

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    sft_run = next(r for r in runs if r.data.tags.get("medmcqa_ray.stage") == "sft")
    losses = client.get_metric_history(sft_run.info.run_id, "sft/loss")
    assert len(losses) >= 20 and {"sft/learning_rate", "sft/grad_norm", "sft/tokens_per_second"} <= set(sft_run.data.metrics)


@pytest.mark.slow
def test_interrupted_sft_resumes_from_its_checkpoint(ray_session, tmp_path):
    out = tmp_path / "out"
    cfg = config(out, "sft.max_steps=12", "sft.save_steps=4")
    run_stage("download", cfg)
    run_stage("prep", cfg)
    r = kill_after_first_checkpoint_and_rerun("sft", out, ["sft.max_steps=12", "sft.save_steps=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "checkpoints" / "sft_manifest.json").read_text())
    steps = [h["step"] for h in manifest["history"] if "loss" in h]
    # The second process continued from the saved step (4 or 8), not from scratch, and finished at 12.
    assert manifest["resumed"] and manifest["resumed_from_step"] in (4, 8) and steps[-1] == 12


def test_empty_train_split_and_unwritable_output_say_so(tmp_path):
    out = tmp_path / "out"
    (out / "data" / "formatted" / "train").mkdir(parents=True)
    with pytest.raises(StageError, match="no formatted train shards"):
        from medmcqa_ray.training.sft import training_rows

        training_rows(config(out))
    locked = tmp_path / "file"
    locked.write_text("x")
    with pytest.raises(StageError, match="cannot be written"):
        run_stage("sft", config(locked / "out"))


def test_rows_longer_than_max_length_are_counted():
    from medmcqa_ray.training.sft import count_truncated

    rows = [{"prompt": [{"role": "user", "content": "short question"}], "completion": "<start_working_out>x<end_working_out><SOLUTION>A</SOLUTION>"},
            {"prompt": [{"role": "user", "content": "word " * 400}], "completion": "<start_working_out>y<end_working_out><SOLUTION>B</SOLUTION>"}]
    assert count_truncated(config(Path("/tmp/unused"), "sft.max_length=128"), rows) == 1


@pytest.mark.slow
def test_two_data_parallel_learners_write_one_adapter(ray_session, tmp_path):
    cfg = config(tmp_path / "out", "scaling.num_workers=2", "scaling.resources_per_worker={CPU: 1}",
                 "sft.max_steps=6", "sft.save_steps=3")
    run_stage("download", cfg)
    run_stage("prep", cfg)
    m = run_stage("sft", cfg)
    assert m["last_loss"] < m["first_loss"]
    assert (Path(cfg.output_dir) / "checkpoints" / "sft" / "adapter_model.safetensors").is_file()
