"""LoRA SFT on Ray Train: it learns, the adapter is a real PEFT adapter, base weights stay put, metrics
reach MLflow, and an interrupted run with two learners resumes from its checkpoint."""

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
def test_sft_learns_and_writes_a_peft_adapter(toy_sft):
    """The session's toy SFT (SmolLM2-135M-Instruct, 16 steps; tests/toy.py), which the GRPO and sweep
    tests start from: its loss falls, the adapter is a PEFT adapter that moved, the base weights did not,
    and its curves are in MLflow."""
    from mlflow import MlflowClient
    from peft import PeftModel

    from medmcqa_ray.models import load_model
    from medmcqa_ray.tracking import tracking_uri

    out, overrides = toy_sft
    cfg = config(out, *overrides, "tracking.enabled=true")
    m = json.loads((out / "checkpoints" / "sft_manifest.json").read_text())
    assert m["last_loss"] < m["first_loss"] - 0.05, (m["first_loss"], m["last_loss"])
    base = load_model(cfg.model, "cpu")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, out / "checkpoints" / "sft")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: training moved it
    for name, tensor in tuned.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name and clean in before:
            assert torch.equal(tensor, before[clean]), name  # base weights unchanged

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    # The SFT run that trained: later jobs on this output_dir (the sweep's) record their SFT stage as skipped.
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    sft_run = next(r for r in runs if r.data.tags.get("medmcqa_ray.stage") == "sft"
                   and r.data.tags.get("medmcqa_ray.skipped") != "true")
    losses = client.get_metric_history(sft_run.info.run_id, "sft/loss")
    assert len(losses) == cfg.sft.max_steps and {"sft/learning_rate", "sft/grad_norm", "sft/tokens_per_second"} <= set(sft_run.data.metrics)


@pytest.mark.slow
def test_interrupted_two_learner_sft_resumes_and_writes_one_adapter(ray_session, tmp_path):
    """Two data-parallel learners (DDP over gloo), the whole run killed after its first checkpoint and
    run again: it continues from that checkpoint and the learners write one adapter."""
    out = tmp_path / "out"
    overrides = ["sft.max_steps=12", "sft.save_steps=4", "scaling.num_workers=2", "scaling.resources_per_worker={CPU: 1}"]
    cfg = config(out, *overrides)
    run_stage("download", cfg)
    run_stage("prep", cfg)
    r = kill_after_first_checkpoint_and_rerun("sft", out, overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "checkpoints" / "sft_manifest.json").read_text())
    steps = [h["step"] for h in manifest["history"] if "loss" in h]
    # The second process continued from the saved step (4 or 8), not from scratch, and finished at 12.
    assert manifest["resumed"] and manifest["resumed_from_step"] in (4, 8) and steps[-1] == 12
    # ... and said so on the console, with the step
    assert f"sft: resuming the interrupted run from its checkpoint at step {manifest['resumed_from_step']}\n" in r.stdout
    assert manifest["last_loss"] < manifest["first_loss"]
    assert sorted(p.name for p in (out / "checkpoints" / "sft").glob("adapter_*")) == [
        "adapter_config.json", "adapter_model.safetensors"]


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
