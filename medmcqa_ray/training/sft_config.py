"""TRL's SFTConfig and PEFT's LoraConfig from the config, as the SFT learner gives them to TRL (and
benchmarks/plan_check.py, which measures the step they make on a GPU).

Imported only where TRL runs (no Ray here)."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig
from trl import SFTConfig

from medmcqa_ray.config import Config, LoraSection
from medmcqa_ray.models import trains_in_bf16


def lora_config(lora: LoraSection) -> LoraConfig:
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM")


def sft_args(cfg: Config, output_dir: Path, device: str) -> SFTConfig:
    s = cfg.sft
    return SFTConfig(
        output_dir=str(output_dir), max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.learning_rate, logging_steps=1,
        save_strategy="steps", save_steps=s.save_steps, save_total_limit=1, report_to=[], max_length=s.max_length,
        completion_only_loss=True, gradient_checkpointing=s.gradient_checkpointing, seed=s.seed,
        bf16=trains_in_bf16(cfg.model, device), use_cpu=device == "cpu", dataloader_num_workers=0,
    )
