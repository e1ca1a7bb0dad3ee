"""Running a learner loop on Ray Train: the TorchTrainer with its storage, scaling and failure
settings, and resuming an interrupted run of the same config (and only that)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

from medmcqa_ray.layout import journal_file, layout
from medmcqa_ray.training.learner import LearnerArgs


def prepare_run_dir(fs: Any, run: str, key: str) -> bool:
    """Resume only an interrupted run of the same config: a finished run, or one with other settings,
    starts afresh (Ray Train restores any run stored under the same name, whatever its settings).
    `run` is the run's folder on `fs`, the store Ray Train checkpoints to (a local folder or a URI such
    as s3://): the key lives there, beside the checkpoints it vouches for, so whichever machine re-runs
    the stage checks the store itself. Returns True when resuming."""
    from pyarrow.fs import FileType

    def exists(path: str) -> bool:
        return fs.get_file_info(path).type != FileType.NotFound

    marker = f"{run}/medmcqa_run_key"
    resuming = exists(run)
    if resuming:
        stored = None
        if exists(marker):
            with fs.open_input_stream(marker) as f:
                stored = f.read().decode()
        if stored != key or exists(f"{run}/finished"):
            fs.delete_dir(run)
            resuming = False
    fs.create_dir(run)
    with fs.open_output_stream(marker) as f:
        f.write(key.encode())
    return resuming


def registered_steps(fs: Any, run: str) -> list[int]:
    """The global step of every checkpoint Ray Train has registered for `run` (its checkpoint manager's
    snapshot, in the run's folder on `fs`), sorted: the last is what a restarted run resumes from. A
    checkpoint folder is not enough: with several learners it appears when the first one saves, and until
    the controller has every learner's report a kill (or a lost node) loses it."""
    try:
        with fs.open_input_stream(f"{run}/checkpoint_manager_snapshot.json") as f:
            return sorted(r["metrics"]["step"] for r in json.loads(f.read())["checkpoint_results"])
    except (FileNotFoundError, json.JSONDecodeError):  # none yet, or caught mid-write
        return []


def fit(name: str, loop: Callable[[dict], None], args: LearnerArgs, key: str, resources_per_worker: dict[str, float],
        callbacks: Optional[list] = None, progress_steps: Optional[int] = None) -> tuple[Any, bool]:
    """Run `loop` on Ray Train workers as run `name` under the checkpoint storage, each worker asking for
    `resources_per_worker` (a GRPO learner's bundle holds its actors too: training/placement.py).
    `callbacks` join the run's; with `progress_steps`, a step bar is drawn and the workers get its
    counter. Returns Ray Train's result and whether an interrupted run was resumed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.execution.storage import get_fs_and_path

    from medmcqa_ray.progress import StepProgress

    cfg = args.cfg
    storage = layout(cfg).ray_storage
    # The store resolved as Ray Train's StorageContext resolves it (pyarrow, for a folder or any URI), so
    # the run key and the finished marker sit in the run's own folder, wherever its checkpoints are.
    fs, root = get_fs_and_path(storage)
    run = Path(root, name).as_posix()
    resuming = prepare_run_dir(fs, run, key)
    if not resuming:
        journal_file(args.final_dir).unlink(missing_ok=True)
    else:  # on the console: a user re-running a killed job wants to know it did not start over
        step = max(registered_steps(fs, run), default=None)
        print(f"{name}: resuming the interrupted run from its checkpoint at step {step}" if step else
              f"{name}: resuming the interrupted run (it saved no checkpoint: from step 0)", flush=True)
    progress = StepProgress(name, progress_steps)
    trainer = TorchTrainer(
        loop,
        train_loop_config=dataclasses.replace(args, progress=progress.counter).as_loop_config(),
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
    )
    with progress:
        result = trainer.fit()
    with fs.open_output_stream(f"{run}/finished") as f:
        f.write(b"ok")
    return result, resuming
