"""HF Trainer callbacks of our learners: the GRPO adapter sync to the rollout actors (and the check
that data-parallel learners hold the same adapter), a sweep trial's validation and the per-step Ray
Train report its Tune scheduler needs, SFT's throughput, and rank 0's live MLflow metrics.

Imported only inside a Ray Train worker (transformers and Ray Train at the top)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import ray.train
from transformers import TrainerCallback

from medmcqa_ray import metric_names as M
from medmcqa_ray.adapters import adapter_checksum, adapter_from_model
from medmcqa_ray.rollout.types import AdapterUpdate
from medmcqa_ray.stage import history_steps
from medmcqa_ray.training.journal import journal
from medmcqa_ray.training.learner import LearnerArgs, ValidationArgs
from medmcqa_ray.training.rollout_function import RolloutFunction
from medmcqa_ray.training.validation import SelectionAccuracy


class AdapterSync(TrainerCallback):
    """After every optimiser step (and at the start, or after a restore), the LoRA tensors go to the
    rollout actors as policy version = global step. `metrics` is the trainer's training metrics
    (trl_metrics.step_buffer), which TRL averages into each logged step."""

    def __init__(self, pool: Any, rollout: RolloutFunction, final_dir: str, metrics: dict[str, list],
                 wait: bool = True):
        """`wait=False` (one-step-off): the actors are generating the next step's samples; they load the
        adapter after them, and the learner goes on at once."""
        self.pool, self.rollout, self.final_dir, self.metrics, self.wait = pool, rollout, final_dir, metrics, wait
        self.weights: dict = {}
        self.step_began = 0.0

    def sync(self, model: Any, version: int) -> float:
        start = time.monotonic()
        config, weights = adapter_from_model(model)
        self.pool.load_adapter(AdapterUpdate(version=version, peft_config=config), weights, wait=self.wait)
        self.weights = weights
        return time.monotonic() - start

    def across_learners(self, step: int, timing: dict[str, float]) -> None:
        """With several learners: each says which adapter it now holds (after DDP's all-reduced step
        they must agree) and how long its step's parts took; the step's log gets whether they agree
        and every rank's timing."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        metrics = self.metrics
        # (.get: TRL's metrics are a defaultdict, and an empty list would break its averaging.)
        local = {k: metrics[k][-1] for k in (M.POLICY_VERSION_LAG, M.LOGPROB_ABS_DIFF) if metrics.get(k)}
        mine = {"adapter": adapter_checksum(self.weights), "timing": timing, "local": local}
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        journal(self.final_dir, "sync", step=step, adapter=mine["adapter"])
        # One value per step for the whole run: the worst lag, the mean logprob gap over learners.
        for name, combine in ((M.POLICY_VERSION_LAG, max), (M.LOGPROB_ABS_DIFF, statistics.fmean)):
            values = [e["local"][name] for e in everyone if name in e["local"]]
            if values and metrics.get(name):
                metrics[name][-1] = combine(values)
        metrics[M.ADAPTERS_AGREE].append(float(len({e["adapter"] for e in everyone}) == 1))
        for rank, e in enumerate(everyone):
            for name, seconds in e["timing"].items():
                metrics[f"{name}/rank{rank}"].append(seconds)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.sync(model, state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_began = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        train = time.monotonic() - self.rollout.finished_at
        seconds = self.sync(model, state.global_step)
        self.metrics[M.TIMING_TRAIN].append(train)
        self.metrics[M.TIMING_SYNC].append(seconds)
        step_seconds = time.monotonic() - self.step_began  # wall time, all of the above
        self.metrics[M.TIMING_STEP].append(step_seconds)
        self.across_learners(state.global_step, self.rollout.last_timing | {
            M.TIMING_TRAIN: train, M.TIMING_SYNC: seconds, M.TIMING_STEP: step_seconds})


class SelectionValidation(TrainerCallback):
    """Scores SelectionAccuracy at step 1, every `every` steps and at the last step. Added after AdapterSync,
    so the rollout actors already hold the step's adapter. `metrics`: trl_metrics.step_buffer."""

    def __init__(self, accuracy: SelectionAccuracy, args: ValidationArgs, metrics: dict[str, list]):
        self.accuracy, self.every, self.metrics = accuracy, args.every, metrics

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == 1 or step % self.every == 0 or step == state.max_steps:
            start = time.monotonic()
            self.metrics[M.SELECTION_ACCURACY].append(self.accuracy())
            self.metrics[M.SELECTION_ACCURACY_STEP].append(step)
            self.metrics[M.TIMING_VALIDATE].append(time.monotonic() - start)


class TuneStepReports(TrainerCallback):
    """A Ray Train report of each logged step (RayTrainReportCallback reports only at checkpoints), so a
    Tune scheduler sees the curve: with TuneReportCallback on the run, each reaches Tune. Each report
    carries the latest value of every metric (as RayTrainReportCallback's do): Tune wants its metric in
    every result, and selection_accuracy is scored every few steps only (selection_accuracy_step says when)."""

    def __init__(self) -> None:
        self.latest: dict = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if M.TRAIN_RUNTIME in (logs or {}):  # the end-of-training summary, not a step
            return
        self.latest = self.latest | {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        ray.train.report(self.latest | {M.STEP: state.global_step})


class Throughput(TrainerCallback):
    """Adds tokens_per_second to each logged step (TRL logs the running token count, not a rate)."""

    def __init__(self) -> None:
        self.last: tuple[float, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = state.log_history[-1] if state.log_history else {}
        if M.NUM_TOKENS not in entry:
            return
        now = time.monotonic()
        if self.last is not None and now > self.last[0]:
            entry[M.TOKENS_PER_SECOND] = (entry[M.NUM_TOKENS] - self.last[1]) / (now - self.last[0])
        self.last = (now, entry[M.NUM_TOKENS])


class LiveMetrics(TrainerCallback):
    """Rank 0 logs each logged step into the stage's MLflow run as it happens (`prefix/metric` at the
    step), and MLflow's system metrics (CPU, memory, GPU where there is one) sample beside them while
    training runs. Added last, so the step's entry already holds what other callbacks add to it."""

    def __init__(self, tracker: Any, prefix: str):
        self.tracker, self.prefix = tracker, prefix
        self.monitor: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step:  # resumed from a checkpoint
            self.restored(state)
        settings = self.tracker.cfg.tracking
        if settings.system_metrics and self.tracker.online():
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            from medmcqa_ray.tracking.store import keep_client_env

            keep_client_env()  # a dead server costs the monitor seconds, not MLflow's minutes of retries
            self.monitor = SystemMetricsMonitor(self.tracker.run_id, tracking_uri=self.tracker.uri,
                                                sampling_interval=settings.system_metrics_interval_s)
            self.monitor.start()

    def restored(self, state) -> None:
        """The steps a resumed run's checkpoint kept, sent unless the run has them: a learner restarted
        within the job logged them live before it died; a new job's run (the job was killed) has none.
        Steps after the checkpoint are trained again and logged again: the run shows both attempts."""
        kept = [(step, values) for step, values in history_steps(state.log_history) if step <= state.global_step and values]
        if not kept:
            return
        have = self.tracker.logged_steps(self._name(next(iter(kept[0][1]))))
        for step, values in kept:
            if step not in have:
                self._log(step, values)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for step, values in history_steps(state.log_history[-1:]):
            self._log(step, values)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _log(self, step: int, values: dict[str, float]) -> None:
        """One step's numbers, named as the manifest's history is when the record sends it (history_steps)."""
        if values:
            self.tracker.log_metrics({self._name(k): v for k, v in values.items()}, step=step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None


def live_metrics(args: LearnerArgs, prefix: str) -> list[TrainerCallback]:
    """Rank 0's LiveMetrics callback into the run the driver opened; none on other ranks or untracked."""
    if args.tracking is None or ray.train.get_context().get_world_rank() != 0:
        return []
    from medmcqa_ray.tracking import Tracker

    return [LiveMetrics(Tracker.attached(args.cfg, args.tracking), prefix)]
