"""The end of every learner's train_func, SFT's and GRPO's alike: the trainer they built gets the callbacks
every learner has (Ray Train's checkpoint report, the driver's progress bar, rank 0's live MLflow metrics),
Ray Train's prepare, the restore from Ray Train's latest checkpoint, training, and rank 0's save of the
final adapter. The stages differ only in the trainer they build and the callbacks they add."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from medmcqa_ray.training import learner
from medmcqa_ray.training.learner import LearnerArgs, LearnerResult


def train(trainer: Any, args: LearnerArgs, work: Path, *, metrics_prefix: str, before_report: Sequence[Any] = (),
          after_report: Sequence[Any] = (), on_start: Optional[Callable[[], None]] = None,
          result: type[LearnerResult] = LearnerResult,
          finish_info: Optional[Callable[[], dict[str, Any]]] = None) -> None:
    """Train `trainer` (a TRL trainer writing its checkpoints under `work`) to the end, resumed where Ray Train
    restored a checkpoint. `before_report`/`after_report`: the stage's own callbacks, in TRL's call order around
    Ray Train's report; `on_start`: after the restore (a journal entry); `result`, `finish_info`: the record
    rank 0 saves in training_info.json and its fields beside the log history."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from medmcqa_ray.progress import StepCounterCallback
    from medmcqa_ray.training.callbacks import live_metrics

    progress = [StepCounterCallback(args.progress)] if args.progress is not None else []
    for callback in [*before_report, RayTrainReportCallback(), *after_report, *progress,
                     *live_metrics(args, metrics_prefix)]:
        trainer.add_callback(callback)
    trainer = prepare_trainer(trainer)
    resume, resumed_from = learner.start(args, work)
    if on_start is not None:
        on_start()
    trainer.train(resume_from_checkpoint=resume)
    learner.finish(trainer, args, result, resumed_from, **(finish_info() if finish_info else {}))
