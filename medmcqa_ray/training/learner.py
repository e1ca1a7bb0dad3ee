"""The learner scaffold SFT and GRPO share: what a Ray Train worker is given (`LearnerArgs`), its device
and scratch folder, restoring the HF Trainer from Ray Train's latest checkpoint, the journal's start
line, rank 0's atomic save of the final adapter, and the manifest fields both stages write.

Cheap to import: the stage modules import it on the driver at CLI start; torch, transformers and Ray
Train are imported where a worker uses them."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Config
from medmcqa_ray.layout import training_info_file
from medmcqa_ray.stage import Manifest, history_steps
from medmcqa_ray.tracking.tracker import RunRef
from medmcqa_ray.training.journal import WorkerStart, journal, restarts

log = logging.getLogger(__name__)


def hide_vllm_from_trl() -> None:
    """Call before importing TRL's trainers in a learner. Our learners never use TRL's own vLLM
    integration (rollouts come from our actors, use_vllm stays off), yet with vLLM installed TRL's
    trainer modules import it at module level: about 5 s of every learner start on CPU. TRL asks
    `trl.import_utils.is_vllm_available` first, so answering no there keeps vLLM out of the process."""
    import trl.import_utils as trl_imports  # `as`: trl is a lazy module without the attribute

    trl_imports.is_vllm_available = lambda *args, **kwargs: False


def score_labelled_positions_only() -> None:
    """TRL's fused LM head (SFT's and GRPO's loss) projects only the positions that have a label on
    Triton devices, and every position elsewhere, so that a compiler (Neuron) sees one tile shape. On a
    CPU nothing is compiled, and with completion-only losses most positions are the prompt's: scoring only
    the labelled ones made an SFT step 1.6x faster here (8 demo steps 43.3 s -> 27.0 s, same losses). TRL
    reads the choice from `trl.trainer.utils._use_triton`; its kernels keep their own copy, so the CPU
    still runs the plain torch tiles."""
    import trl.trainer.utils as trl_utils

    choose = getattr(trl_utils, "_use_triton", None)
    if choose is None:  # a TRL that decides this elsewhere: slower on CPU, never wrong
        log.warning("trl.trainer.utils._use_triton is gone: TRL's loss scores every position on CPU")
        return
    if getattr(choose, "compact_on_cpu", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or choose(device)

    setattr(compact, "compact_on_cpu", True)  # mypy allows no new attribute on a function; getattr above reads it
    trl_utils._use_triton = compact


def prepare_trl() -> None:
    """Call before importing TRL's trainers in a learner (both adjustments above)."""
    hide_vllm_from_trl()
    score_labelled_positions_only()


@dataclass(frozen=True)
class ValidationArgs:
    """A sweep trial's validation: greedy accuracy on the first `rows` validation questions, scored at
    step 1, every `every` steps, and at the last step."""

    rows: int
    every: int


@dataclass(frozen=True)
class LearnerArgs:
    """What every learner gets. Ray Train's train_loop_config must be a dict: `as_loop_config()` wraps
    this in one and `from_loop_config` unwraps it in the worker. The Config object travels pickled: a
    JSON dump would turn secrets such as model.hub_token into ***."""

    cfg: Config
    final_dir: str
    progress: Any = None  # the driver's StepCounter actor, when a step bar is drawn
    validation: Optional[ValidationArgs] = None
    tracking: Optional[RunRef] = None  # the MLflow run rank 0 logs each step into (None: tracking off)

    def as_loop_config(self) -> dict:
        return {"args": self}

    @staticmethod
    def from_loop_config(loop_config: dict) -> "LearnerArgs":
        return loop_config["args"]


def device(cfg: Config) -> str:
    import torch

    return "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"


def work_dir(stage: str) -> Path:
    """The HF Trainer's own output folder: scratch, since Ray Train keeps the checkpoints that count."""
    return Path(tempfile.mkdtemp(prefix=f"{stage}-"))


TRL_REFERENCE_ADAPTER = "ref"
"""The name TRL's GRPOTrainer gives the frozen copy of a PEFT model's starting adapter, its KL reference."""


def restored_checkpoint(work: Path) -> tuple[Optional[str], int]:
    """The HF checkpoint inside Ray Train's latest checkpoint, copied under `work` for
    `trainer.train(resume_from_checkpoint=...)`, and its global step; (None, 0) on a fresh start."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None, 0
    with checkpoint.as_directory() as d:
        resume = work / "resume"
        shutil.copytree(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME, resume)
    # With grpo.beta > 0 the checkpoint also holds TRL's frozen reference adapter, in a subfolder. Seeing an
    # adapter in a subfolder, transformers' resume loads the subfolders' adapters only, not the trained one at
    # the top: the resumed policy would be its SFT start again. TRL re-makes the reference from that start
    # when the trainer is built, so the copy goes.
    shutil.rmtree(resume / TRL_REFERENCE_ADAPTER, ignore_errors=True)
    return str(resume), json.loads((resume / "trainer_state.json").read_text())["global_step"]


def start(args: LearnerArgs, work: Path) -> tuple[Optional[str], int]:
    """Restore from Ray Train's checkpoint, if any, and journal this worker's start."""
    resume, resumed_from = restored_checkpoint(work)
    journal(args.final_dir, "start", resumed_from_step=resumed_from)
    return resume, resumed_from


LogEntry = dict[str, Union[int, float, str, None]]
"""One entry of the trainer's log history: a logged step's metrics (metric_names.py), or the end-of-training
summary."""


class LearnerResult(BaseModel):
    """What rank 0 writes in training_info.json beside the final adapter, and the driver reads back into the
    stage's manifest. GRPO's adds its actors (GRPOLearnerResult)."""

    # NaN stays NaN on disk (a diverged loss is a fact to keep, not a null).
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    log_history: list[LogEntry]
    resumed_from_step: int
    """The checkpoint step the last learner restored; 0 for a fresh start."""


def finish(trainer: Any, args: LearnerArgs, result: type[LearnerResult], resumed_from: int, **fields: Any) -> None:
    """Rank 0 saves the final adapter with its training info (the log history, and `fields` of `result`)."""
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        save_final(trainer.model, Path(args.final_dir),
                   result(log_history=trainer.state.log_history, resumed_from_step=resumed_from, **fields))


def save_final(model: Any, final_dir: Path, info: LearnerResult) -> None:
    """The final PEFT adapter plus `training_info.json`, written beside and renamed into place, so a
    crash never leaves a half-written adapter where the next stage looks for one."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Only the trained adapter: with grpo.beta > 0, TRL keeps a frozen copy of the starting adapter beside it
    # (TRL_REFERENCE_ADAPTER), which save_pretrained would write into a subfolder.
    model.save_pretrained(tmp, selected_adapters=["default"])
    training_info_file(tmp).write_text(info.model_dump_json())
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp.rename(final_dir)


ResultT = TypeVar("ResultT", bound=LearnerResult)


def training_info(final_dir: Path, result: type[ResultT]) -> ResultT:
    return result.model_validate_json(training_info_file(final_dir).read_text())


class TrainingManifest(Manifest):
    """What the sft and grpo manifests share: the adapter written, whether and where an interrupted run
    resumed, the worker (re)starts the journal saw, and the trainer's per-step log."""

    adapter: str
    resumed: bool
    resumed_from_step: int
    worker_starts: list[WorkerStart]
    worker_restarts: int
    journal: str
    steps: int
    history: list[LogEntry]
    checkpoint: Optional[str]
    logged_live: bool = False
    """Rank 0 logged each step into the stage's run as it trained: the record does not send them again."""

    def metrics(self) -> dict[str, float]:
        return {f"{self.stage}/worker_restarts": self.worker_restarts}

    def step_metrics(self) -> Iterator[tuple[int, dict[str, float]]]:
        return iter(()) if self.logged_live else history_steps(self.history)

    def adapter_model(self) -> Optional[tuple[str, Path]]:
        return self.stage, Path(self.adapter)


def manifest_fields(final: Path, info: LearnerResult, result: Any, resumed: bool,
                    tracking: Optional[RunRef]) -> dict[str, Any]:
    """The TrainingManifest fields of a finished run (`info`: its training_info, `result`: Ray Train's), as
    keyword arguments of the stage's manifest."""
    return {"adapter": str(final), "resumed": resumed, "resumed_from_step": info.resumed_from_step,
            **dict(restarts(final)), "history": info.log_history, "logged_live": tracking is not None,
            "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}
