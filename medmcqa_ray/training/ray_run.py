"""What the SFT and GRPO stages share around their Ray Train run: the TorchTrainer with its storage,
scaling and failure settings, resuming an interrupted run of the same config, restoring the HF Trainer
from the Ray Train checkpoint, the run's journal, and the atomic save of the final adapter.

The journal (`checkpoints/<stage>_journal.jsonl`, beside the final adapter) is what a Ray Train
restart leaves no other trace of: one line per worker start (pid, the step it resumed from) and, for
GRPO, the prompts each step trained on. It is kept across an interrupted run's re-runs and cleared when
a run starts afresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from medmcqa_ray.config import Config


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


def fit(name: str, loop: Callable[[dict], None], cfg: Config, key: str, final_dir: Path,
        extra: Optional[dict] = None, callbacks: Optional[list] = None,
        progress_steps: Optional[int] = None) -> tuple[Any, bool]:
    """Run `loop` on Ray Train workers as run `name` under the checkpoint storage (`extra` joins the loop's
    config, `callbacks` the run's; with `progress_steps`, a step bar is drawn and the loop gets its counter
    as "progress"). Returns Ray Train's result and whether an interrupted run was resumed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.execution.storage import get_fs_and_path

    from medmcqa_ray.progress import StepProgress

    storage = cfg.scaling.storage_path or str(Path(cfg.output_dir) / "checkpoints" / "ray")
    # The store resolved as Ray Train's StorageContext resolves it (pyarrow, for a folder or any URI), so
    # the run key and the finished marker sit in the run's own folder, wherever its checkpoints are.
    fs, root = get_fs_and_path(storage)
    run = Path(root, name).as_posix()
    resuming = prepare_run_dir(fs, run, key)
    if not resuming:
        journal_path(final_dir).unlink(missing_ok=True)
    progress = StepProgress(name, progress_steps)
    trainer = TorchTrainer(
        loop,
        # The Config object itself (pickled): a JSON dump would turn secrets such as model.hub_token into ***.
        train_loop_config={"cfg": cfg, "final_dir": str(final_dir), "progress": progress.counter} | (extra or {}),
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=learner_resources(cfg, loop)),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
    )
    with progress:
        result = trainer.fit()
    with fs.open_output_stream(f"{run}/finished") as f:
        f.write(b"ok")
    return result, resuming


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
    return str(resume), json.loads((resume / "trainer_state.json").read_text())["global_step"]


def journal_path(final_dir: Path) -> Path:
    return Path(final_dir).with_name(f"{Path(final_dir).name}_journal.jsonl")


def journal(final_dir: Path | str, event: str, **fields: Any) -> None:
    """Append one event (every rank writes its own lines; each line is one small append)."""
    import os
    import time

    import ray
    import ray.train

    record = {"event": event, "rank": ray.train.get_context().get_world_rank(), "pid": os.getpid(),
              "node": ray.get_runtime_context().get_node_id(), "time": time.time()} | fields
    path = journal_path(Path(final_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_journal(final_dir: Path) -> list[dict]:
    path = journal_path(final_dir)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def worker_starts(final_dir: Path) -> list[dict]:
    """Rank 0's starts: the first, then one per restart (Ray Train's FailureConfig, or a re-run)."""
    return [{"resumed_from_step": e["resumed_from_step"], "pid": e["pid"]}
            for e in read_journal(final_dir) if e["event"] == "start" and e["rank"] == 0]


def restarts(final_dir: Path) -> dict:
    """What a stage's manifest says of its worker starts (and so MLflow: <stage>/worker_restarts)."""
    starts = worker_starts(final_dir)
    return {"worker_starts": starts, "worker_restarts": max(len(starts) - 1, 0), "journal": str(journal_path(final_dir))}


def save_final(model: Any, final_dir: Path, info: dict) -> None:
    """The final PEFT adapter plus `training_info.json`, written beside and renamed into place, so a
    crash never leaves a half-written adapter where the next stage looks for one."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "training_info.json").write_text(json.dumps(info, default=str))
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp.rename(final_dir)


def training_info(final_dir: Path) -> dict:
    return json.loads((final_dir / "training_info.json").read_text())


def learner_resources(cfg: Config, loop: Callable[[dict], None]) -> dict[str, float]:
    """Ray Train's bundle for one learner. A GRPO learner's also holds its rollout and reward actors
    (training/placement.py), so Ray places each learner where its actors fit too, or says it cannot."""
    from medmcqa_ray.training import placement

    return placement.worker_resources(cfg) if placement.creates_actors(loop) else cfg.scaling.resources_per_worker
