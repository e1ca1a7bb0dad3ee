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

import logging
import tempfile
from pathlib import Path

from medmcqa_ray.config import Config
from medmcqa_ray.data.shards import read_shard
from medmcqa_ray.errors import StageError
from medmcqa_ray.training.ray_run import fit, journal, restarts, restored_checkpoint, save_final, training_info

log = logging.getLogger(__name__)


def training_rows(cfg: Config) -> list[dict]:
    folder = Path(cfg.output_dir) / "data" / "formatted" / "train"
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise StageError(f"{folder} has no formatted train shards: run download and prep first")
    rows = [r for f in files for r in read_shard(f, ["prompt", "completion"]).to_pylist() if r["completion"]]
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
    from medmcqa_ray.progress import ReportSteps

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
    if loop_config.get("progress") is not None:
        trainer.add_callback(ReportSteps(loop_config["progress"]))
    trainer = prepare_trainer(trainer)
    resume, resumed_from = restored_checkpoint(work)
    journal(loop_config["final_dir"], "start", resumed_from_step=resumed_from)
    trainer.train(resume_from_checkpoint=resume)
    if ctx.get_world_rank() == 0:
        save_final(trainer.model, Path(loop_config["final_dir"]),
                   {"log_history": trainer.state.log_history, "resumed_from_step": resumed_from})


def count_truncated(cfg: Config, rows: list[dict]) -> int:
    """Rows whose prompt + target exceed sft.max_length tokens (SFTTrainer truncates them)."""
    from medmcqa_ray.models import load_tokenizer

    tok = load_tokenizer(cfg.model)
    texts = [tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": r["completion"]}], tokenize=False)
             for r in rows]
    return sum(len(ids) > cfg.sft.max_length for ids in tok(texts, add_special_tokens=False)["input_ids"])


def run_sft(cfg: Config, key: str = "") -> dict:
    rows = training_rows(cfg)  # fail before starting workers when there is nothing to train on
    truncated = count_truncated(cfg, rows)
    if truncated:
        log.warning("sft: %d of %d rows exceed sft.max_length=%d tokens and are truncated", truncated, len(rows), cfg.sft.max_length)
    final = Path(cfg.output_dir) / "checkpoints" / "sft"
    result, resuming = fit("sft", _train_loop, cfg, key, final, progress_steps=cfg.sft.max_steps)
    info = training_info(final)
    history = info["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    return {"stage": "sft", "adapter": str(final), "rows": len(rows), "truncated_rows": truncated, "resumed": resuming,
            "resumed_from_step": info["resumed_from_step"], **restarts(final),
            "steps": cfg.sft.max_steps,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "history": history, "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}
