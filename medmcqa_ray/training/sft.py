"""The sft stage: LoRA SFT on Ray Train, a TorchTrainer whose worker loop runs TRL's SFTTrainer (loss
on the assistant completion only: TRL's completion mask, prompt tokens masked).

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
from pathlib import Path
from typing import ClassVar, Literal, Optional

from medmcqa_ray import metric_names as M
from medmcqa_ray.config import Config
from medmcqa_ray.data.formatted_rows import read_formatted
from medmcqa_ray.layout import layout
from medmcqa_ray.stage import Stage, hash_parts, upstream_key
from medmcqa_ray.tracking import active_run
from medmcqa_ray.training import learner
from medmcqa_ray.training.learner import LearnerArgs, LearnerResult, TrainingManifest
from medmcqa_ray.training.ray_run import fit

log = logging.getLogger(__name__)


def training_rows(cfg: Config) -> list[dict]:
    """The labelled rows of the train split: the prompt and its SFT target."""
    return read_formatted(layout(cfg).formatted("train"), ["prompt", "completion"], purpose="fine-tune on").to_pylist()


class SFTManifest(TrainingManifest):
    stage: str = "sft"
    rows: int
    truncated_rows: int
    first_loss: Optional[float]
    last_loss: Optional[float]

    def metrics(self) -> dict[str, float]:
        # No loss when the log history holds none (a run with no step logged): MLflow takes numbers only.
        found = {f"sft/{k}": v for k, v in (("first_loss", self.first_loss), ("last_loss", self.last_loss)) if v is not None}
        return found | super().metrics()

    def table(self) -> str:
        resumed = f", resumed from step {self.resumed_from_step}" if self.resumed_from_step else ""
        first, last = ("-" if x is None else f"{x:.3f}" for x in (self.first_loss, self.last_loss))
        return f"{self.steps} steps, loss {first} -> {last}{resumed}\nadapter: {self.adapter}"


def _train_loop(loop_config: dict) -> None:
    """One learner (a Ray Train worker)."""
    learner.prepare_trl()
    import datasets
    from trl import SFTTrainer

    from medmcqa_ray.models import load_model, load_tokenizer
    from medmcqa_ray.training import learner_loop
    from medmcqa_ray.training.callbacks import Throughput
    from medmcqa_ray.training.sft_config import lora_config, sft_args

    args = LearnerArgs.from_loop_config(loop_config)
    cfg = args.cfg
    s = cfg.sft
    device = learner.device(cfg)
    rows = training_rows(cfg)
    dataset = datasets.Dataset.from_list(
        [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, device)
    work = learner.work_dir("sft")
    trainer = SFTTrainer(model=model, args=sft_args(cfg, work, device), train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(s.lora))
    learner_loop.train(trainer, args, work, metrics_prefix="sft", after_report=[Throughput()])


def count_truncated(cfg: Config, rows: list[dict]) -> int:
    """Rows whose prompt + target exceed sft.max_length tokens (SFTTrainer truncates them)."""
    from medmcqa_ray.models import load_tokenizer

    tok = load_tokenizer(cfg.model)
    texts = [tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": r["completion"]}], tokenize=False)
             for r in rows]
    return sum(len(ids) > cfg.sft.max_length for ids in tok(texts, add_special_tokens=False)["input_ids"])


class SFTStage(Stage[SFTManifest]):
    name: ClassVar[Literal["sft"]] = "sft"
    manifest_type = SFTManifest

    def inputs(self, cfg: Config) -> list[Path]:
        return [layout(cfg).formatted("train")]

    def output(self, cfg: Config) -> Path:
        return layout(cfg).trained_adapter("sft")

    def manifest_path(self, cfg: Config) -> Path:
        return layout(cfg).training_manifest("sft")

    def cache_key(self, cfg: Config) -> str:
        return hash_parts(cfg.section_hash("model", "sft", "scaling"), upstream_key(layout(cfg).formatted_manifest))

    def run(self, cfg: Config) -> SFTManifest:
        key = self.cache_key(cfg)
        rows = training_rows(cfg)  # fail before starting workers when there is nothing to train on
        truncated = count_truncated(cfg, rows)
        if truncated:
            log.warning("sft: %d of %d rows exceed sft.max_length=%d tokens and are truncated",
                        truncated, len(rows), cfg.sft.max_length)
        final = self.output(cfg)
        tracking = active_run()
        result, resumed = fit("sft", _train_loop, LearnerArgs(cfg, str(final), tracking=tracking), key,
                              cfg.scaling.resources_per_worker, progress_steps=cfg.sft.max_steps)
        info = learner.training_info(final, LearnerResult)
        fields = learner.manifest_fields(final, info, result, resumed, tracking)
        losses = [h[M.LOSS] for h in fields["history"] if M.LOSS in h]
        return SFTManifest(**fields, rows=len(rows), truncated_rows=truncated, steps=cfg.sft.max_steps,
                           first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                           config_hash=key)


STAGE = SFTStage()
