"""LoRA SFT on Ray Train: a TorchTrainer whose worker loop runs TRL's SFTTrainer (loss on the assistant
completion only: TRL's completion mask, prompt tokens masked).

Training rows are read per worker from the formatted Parquet shards rather than through Ray Data's
`get_dataset_shard`: SFTTrainer tokenises and masks a `datasets.Dataset` up front (an iterable shard
would skip that), the SFT set is small (at most 183k short rows), and with several workers the HF
Trainer's distributed sampler gives each rank its share.

Checkpoints: `RayTrainReportCallback` turns each HF checkpoint into a Ray Train checkpoint under
`checkpoints/ray/sft/`; a re-run with the same name restores from the latest (Ray Train V2 keeps the
checkpoint manager in storage) and `ray.train.get_checkpoint()` hands it to `trainer.train`. The final
adapter is a plain PEFT folder in `checkpoints/sft/`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError

log = logging.getLogger(__name__)


def training_rows(cfg: Config) -> list[dict]:
    folder = Path(cfg.output_dir) / "data" / "formatted" / "train"
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise StageError(f"{folder} has no formatted train shards: run download and prep first")
    rows = [r for f in files for r in pq.read_table(f, columns=["prompt", "completion"]).to_pylist() if r["completion"]]
    if not rows:
        raise StageError(f"{folder}: the train split has no labelled rows, so there is nothing to fine-tune on")
    return rows


def _throughput_callback():
    import time

    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        """Adds tokens_per_second to each logged step (TRL logs the running token count, not a rate)."""

        def __init__(self):
            self.last: tuple[float, float] | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            entry = state.log_history[-1] if state.log_history else {}
            if "num_tokens" not in entry:
                return
            now = time.monotonic()
            if self.last is not None and now > self.last[0]:
                entry["tokens_per_second"] = (entry["num_tokens"] - self.last[1]) / (now - self.last[0])
            self.last = (now, entry["num_tokens"])

    return Throughput()


def _train_loop(loop_config: dict) -> None:
    import datasets
    import ray.train
    import torch
    from peft import LoraConfig
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from trl import SFTConfig, SFTTrainer

    from medmcqa_ray.models import load_model, load_tokenizer

    cfg: Config = loop_config["cfg"]
    s = cfg.sft
    ctx = ray.train.get_context()
    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    rows = training_rows(cfg)
    dataset = datasets.Dataset.from_list(
        [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, device)
    work = Path(tempfile.mkdtemp(prefix="sft-"))
    args = SFTConfig(
        output_dir=str(work), max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.learning_rate, logging_steps=1,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=1, report_to=[], max_length=s.max_length,
        completion_only_loss=True, gradient_checkpointing=s.gradient_checkpointing, seed=s.seed,
        bf16=device == "cuda", use_cpu=device == "cpu", dataloader_num_workers=0,
    )
    lora = LoraConfig(r=s.lora.r, lora_alpha=s.lora.alpha, lora_dropout=s.lora.dropout,
                      target_modules=s.lora.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    trainer.add_callback(RayTrainReportCallback())
    trainer.add_callback(_throughput_callback())
    trainer = prepare_trainer(trainer)
    resume, resumed_from = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            resume = str(work / "resume")
            shutil.copytree(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME, resume)
        resumed_from = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
    trainer.train(resume_from_checkpoint=resume)
    if ctx.get_world_rank() == 0:
        final = Path(loop_config["final_dir"])
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp)
        (tmp / "log_history.json").write_text(json.dumps(trainer.state.log_history))
        (tmp / "resumed_from_step.json").write_text(json.dumps(resumed_from))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def count_truncated(cfg: Config, rows: list[dict]) -> int:
    """Rows whose prompt + target exceed sft.max_length tokens (SFTTrainer truncates them)."""
    from medmcqa_ray.models import load_tokenizer

    tok = load_tokenizer(cfg.model)
    texts = [tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": r["completion"]}], tokenize=False)
             for r in rows]
    return sum(len(ids) > cfg.sft.max_length for ids in tok(texts, add_special_tokens=False)["input_ids"])


def prepare_run_dir(run_dir: Path, key: str) -> bool:
    """Resume only an interrupted run of the same config: a finished run, or one with other settings,
    starts afresh (Ray Train restores any run stored under the same name). Returns True when resuming."""
    marker = run_dir / "medmcqa_run_key"
    if run_dir.exists() and (not marker.exists() or marker.read_text() != key or (run_dir / "finished").exists()):
        shutil.rmtree(run_dir)
    resuming = run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)
    return resuming


def run_sft(cfg: Config, key: str = "") -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    rows = training_rows(cfg)  # fail before starting workers when there is nothing to train on
    truncated = count_truncated(cfg, rows)
    if truncated:
        log.warning("sft: %d of %d rows exceed sft.max_length=%d tokens and are truncated", truncated, len(rows), cfg.sft.max_length)
    out = Path(cfg.output_dir).resolve()
    final = out / "checkpoints" / "sft"
    storage = cfg.scaling.storage_path or str(out / "checkpoints" / "ray")
    # The resume bookkeeping needs a local folder; on a URI store Ray Train's own restore applies.
    if "://" not in storage:
        storage = str(Path(storage).resolve())  # Ray Train wants an absolute local path
    local_runs = None if "://" in storage else Path(storage) / "sft"
    resuming = prepare_run_dir(local_runs, key) if local_runs else False
    trainer = TorchTrainer(
        _train_loop,
        # The Config object itself (pickled): a JSON dump would turn secrets such as model.hub_token into ***.
        train_loop_config={"cfg": cfg, "final_dir": str(final)},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=cfg.scaling.resources_per_worker),
        run_config=RunConfig(name="sft", storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if local_runs:
        (local_runs / "finished").write_text("ok")
    history = json.loads((final / "log_history.json").read_text())
    resumed_from = json.loads((final / "resumed_from_step.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    return {"stage": "sft", "adapter": str(final), "rows": len(rows), "truncated_rows": truncated, "resumed": resuming,
            "resumed_from_step": resumed_from,
            "steps": cfg.sft.max_steps,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "history": history, "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}
