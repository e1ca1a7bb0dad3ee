"""The grpo stage: GRPO on Ray Train, a TorchTrainer whose worker runs TRL's GRPOTrainer (TRL's loss),
continuing the SFT adapter, with generation in rollout actors and scoring in reward actors.

Each learner owns a RolloutPool and a RewardPool (training/placement.py puts them beside it). TRL calls
our RolloutFunction with the learner's prompts (training/rollout_function.py). After every optimiser
step the LoRA tensors go to the rollout actors as a new policy version (training/callbacks.py:
AdapterSync). Synchronous (grpo.max_off_policy_steps=0), each step generates with the adapter it trains:
rollout/policy_version_lag is 0 and rollout/logprob_abs_diff (rollout vs learner logprobs of the sampled
tokens) measures only numerics. One-step-off (1), step t+1 is generated with step t's adapter while step t
trains (lag 1), and TRL's truncated importance sampling corrects the gap (training/grpo_trainer.py).

Checkpoints: RayTrainReportCallback as in SFT (checkpoints/ray/grpo/); a re-run restores the latest and
the HF Trainer continues at the same global step and data position. Final adapter in checkpoints/grpo/.
A sweep trial runs the same learner under its own name and folder (`train`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar, Literal, Optional

from medmcqa_ray import metric_names as M
from medmcqa_ray.config import Config
from medmcqa_ray.data.formatted_rows import read_formatted
from medmcqa_ray.errors import StageError
from medmcqa_ray.formatting import reorder_options
from medmcqa_ray.layout import layout
from medmcqa_ray.rewards.actor import RewardActorInfo
from medmcqa_ray.rollout.types import ActorHealth
from medmcqa_ray.stage import Stage, fingerprint, hash_parts, upstream_key
from medmcqa_ray.tracking import RunRef, active_run
from medmcqa_ray.tracking.adapter_source import fetched_source
from medmcqa_ray.training import learner
from medmcqa_ray.training.journal import journal
from medmcqa_ray.training.learner import LearnerArgs, LearnerResult, LogEntry, TrainingManifest, ValidationArgs
from medmcqa_ray.training.ray_run import fit


PROMPT_COLUMNS = ["id", "prompt", "answer_label", "explanation", "options", "question"]


def training_prompts(cfg: Config) -> list[dict]:
    """Labelled formatted rows of grpo.split: the prompt and what the rewards need, each asked with its options
    reordered when grpo.shuffle_options is on (the same order on every run with this seed: a resumed run
    and each learner see the prompts an uninterrupted one does)."""
    rows = read_formatted(layout(cfg).formatted(cfg.grpo.split), PROMPT_COLUMNS, cfg.grpo.limit,
                          purpose="train on").to_pylist()
    if not cfg.grpo.shuffle_options:
        return rows
    return [reorder_options(r, random.Random(f"{cfg.grpo.seed}:{r['id']}").sample(range(len(r["options"])),
                                                                                 len(r["options"])), cfg.format)
            for r in rows]


class GRPOLearnerResult(LearnerResult):
    """GRPO's training_info.json: the log history, and its actors as rank 0 last saw them."""

    rollout_actors: list[ActorHealth]
    reward_actors: list[RewardActorInfo]


class GRPOManifest(TrainingManifest):
    stage: str = "grpo"
    init_adapter: str
    init_adapter_source: Optional[str] = None
    """The MLflow version init_adapter was fetched from (adapters.sft=models:/...), if it was."""
    first_correct: Optional[float]
    last_correct: Optional[float]
    rollout_actors: list[ActorHealth]
    reward_actors: list[RewardActorInfo]
    similarity_scorer: str
    """Which similarity ran (embedding, or the token-overlap fallback): the reward is not the same."""

    def _steps(self) -> list[LogEntry]:
        return [h for h in self.history if M.CORRECT in h]

    def metrics(self) -> dict[str, float]:
        found = {f"grpo/{k}": v for k, v in (("first_correct", self.first_correct), ("last_correct", self.last_correct))
                 if v is not None}
        return found | super().metrics()

    def params(self) -> dict:
        return {"rewards.similarity_scorer": self.similarity_scorer} if self.similarity_scorer else {}

    def table(self) -> str:
        lines = [f"{'step':>5}{'correct':>9}{'format':>8}{'reward':>9}{'length':>8}{'lag':>5}{'|dlogp|':>10}"
                 f"{'IS mean':>9}{'wait s':>8}"]
        nan = float("nan")
        for h in self._steps():
            lines.append(f"{h['step']:>5}{h[M.CORRECT]:>9.3f}{h[M.FORMAT_EXACT]:>8.3f}"
                         f"{h[M.REWARD]:>9.3f}{h[M.COMPLETION_LENGTH]:>8.1f}{h[M.POLICY_VERSION_LAG]:>5.0f}"
                         f"{h.get(M.LOGPROB_ABS_DIFF, nan):>10.1e}{h.get(M.IS_RATIO_MEAN, nan):>9.3f}"
                         f"{h.get(M.TIMING_LEARNER_WAIT, nan):>8.1f}")
        return "\n".join(lines + [f"similarity reward scorer: {self.similarity_scorer or 'unknown'}",
                                  f"adapter: {self.adapter} (continued {self.init_adapter_source or self.init_adapter})"])


def _train_loop(loop_config: dict) -> None:
    """One learner (a Ray Train worker) with its rollout and reward actors."""
    from medmcqa_ray.rewards.actor import RewardPool
    from medmcqa_ray.rollout.actor import RolloutPool
    from medmcqa_ray.training import placement

    args = LearnerArgs.from_loop_config(loop_config)
    cfg = args.cfg
    placement.keep_learner_share(cfg)
    # The actors first, without waiting: they import torch and load their models while this learner
    # imports TRL, where there are cores to do both (on the 2-core demo, where all of it is CPU-bound, the
    # stage's start-up stayed about 68 s). Reward actors (CPU only) are never waited for; the rollout pool
    # is, before the learner loads its model: a vLLM engine sharing the learner's GPU sizes its KV cache
    # from the memory free when it starts, so the learner allocates after it, and a failed start stops
    # the stage there.
    reward_pool = RewardPool(cfg.rewards, cfg.format.markers, placement.reward_options(cfg))
    rollout_pool = RolloutPool(cfg.model, cfg.rollout, placement.rollout_options(cfg), wait=False)
    learner.prepare_trl()
    import datasets
    import ray.train
    from peft import PeftModel
    from transformers import TrainerCallback

    from medmcqa_ray.models import load_model, load_tokenizer
    from medmcqa_ray.rewards.registry import trl_reward_funcs
    from medmcqa_ray.training import learner_loop
    from medmcqa_ray.training.callbacks import AdapterSync, SelectionValidation, TuneStepReports
    from medmcqa_ray.training.grpo_trainer import RolloutGRPOTrainer, grpo_args
    from medmcqa_ray.training.rollout_function import RolloutFunction
    from medmcqa_ray.training.trl_metrics import step_buffer
    from medmcqa_ray.training.validation import SelectionAccuracy

    device = learner.device(cfg)
    rows = training_prompts(cfg)
    tokenizer = load_tokenizer(cfg.model)
    rollout_pool.ready()
    model = PeftModel.from_pretrained(load_model(cfg.model, device), str(layout(cfg).adapter("sft")), is_trainable=True)
    rollout = RolloutFunction(cfg, tokenizer, rows, rollout_pool, reward_pool, ray.train.get_context().get_world_rank(),
                              cfg.grpo.num_generations, args.final_dir)
    work = learner.work_dir("grpo")
    trainer = RolloutGRPOTrainer(
        model=model, reward_funcs=trl_reward_funcs(cfg.rewards), args=grpo_args(cfg, work, device),
        train_dataset=datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in rows]),
        processing_class=tokenizer, rollout_func=rollout, off_policy=cfg.grpo.max_off_policy_steps > 0)
    metrics = step_buffer(trainer)  # TRL averages what callbacks append here into each logged step
    own: list[TrainerCallback] = [AdapterSync(rollout_pool, rollout, args.final_dir, metrics,
                                              wait=cfg.grpo.max_off_policy_steps == 0)]
    if args.validation:  # a sweep trial: scored on the selection split, and Tune's scheduler needs every step
        own.append(SelectionValidation(SelectionAccuracy(cfg, tokenizer, rollout_pool, args.validation.rows),
                                       args.validation, metrics))

    def journal_actors() -> None:  # where placement put them
        journal(args.final_dir, "actors", strategy=cfg.placement.strategy,
                rollout=[{"actor_id": a.actor_id, "node_id": a.node_id} for a in rollout_pool.health()],
                reward=[{"actor_id": a.actor_id, "node_id": a.node_id} for a in reward_pool.info()])

    try:
        # A sweep trial's run holds just this GRPO run: its metrics keep the names Tune reports them by.
        learner_loop.train(trainer, args, work, metrics_prefix="grpo" if args.validation is None else "",
                           before_report=own, after_report=[TuneStepReports()] if args.validation else [],
                           on_start=journal_actors, result=GRPOLearnerResult,
                           finish_info=lambda: {"rollout_actors": rollout_pool.health(),
                                                "reward_actors": reward_pool.info()})
    finally:
        rollout_pool.shutdown()
        reward_pool.shutdown()


def check_config(cfg: Config) -> None:
    """What must hold before any worker starts."""
    from medmcqa_ray.adapters import read_adapter
    from medmcqa_ray.training.capacity import check_resources

    if cfg.rewards.similarity_fallback == "error":
        from medmcqa_ray.rewards.similarity import missing_model

        if why := missing_model(cfg.rewards.similarity_model):
            raise StageError(f"rewards.similarity_fallback=error: the similarity model cannot load: {why}")
    read_adapter(layout(cfg).adapter("sft"))  # a clear error naming the folder when the SFT adapter is missing
    training_prompts(cfg)
    check_resources(cfg)


def train(cfg: Config, key: str, name: str = "grpo", final_dir: Optional[Path] = None,
          run_callbacks: Optional[list] = None, validation: Optional[ValidationArgs] = None,
          tracking: Optional[RunRef] = None) -> GRPOManifest:
    """The grpo stage's run; a sweep trial runs it under its own name and folder, with Tune's callback,
    validation every few steps, and its own MLflow run (`tracking`; default: the stage's open run)."""
    from medmcqa_ray.training import placement

    check_config(cfg)
    final = final_dir or layout(cfg).trained_adapter("grpo")
    tracking = tracking or active_run()
    # A sweep trial (validation set) runs under Tune, whose driver is not a terminal of ours: no bar there.
    result, resumed = fit(name, _train_loop, LearnerArgs(cfg, str(final), validation=validation, tracking=tracking),
                          key, placement.worker_resources(cfg), callbacks=run_callbacks,
                          progress_steps=None if validation else cfg.grpo.max_steps)
    info = learner.training_info(final, GRPOLearnerResult)
    fields = learner.manifest_fields(final, info, result, resumed, tracking)
    steps = [h for h in fields["history"] if M.CORRECT in h]
    fetched = fetched_source(layout(cfg).adapter("sft"))
    return GRPOManifest(**fields, init_adapter=str(layout(cfg).adapter("sft")), steps=cfg.grpo.max_steps,
                        init_adapter_source=f"{fetched.uri} = {fetched.resolved}" if fetched else None,
                        first_correct=steps[0][M.CORRECT] if steps else None,
                        last_correct=steps[-1][M.CORRECT] if steps else None,
                        rollout_actors=info.rollout_actors, reward_actors=info.reward_actors,
                        # every actor's: RewardScores.merge stops a step whose actors scored differently
                        similarity_scorer=",".join(sorted({a.similarity_scorer for a in info.reward_actors})),
                        config_hash=key)


class GRPOStage(Stage[GRPOManifest]):
    name: ClassVar[Literal["grpo"]] = "grpo"
    manifest_type = GRPOManifest

    def inputs(self, cfg: Config) -> list[Path]:
        return [layout(cfg).adapter("sft"), layout(cfg).formatted(cfg.grpo.split)]

    def output(self, cfg: Config) -> Path:
        return layout(cfg).trained_adapter("grpo")

    def manifest_path(self, cfg: Config) -> Path:
        return layout(cfg).training_manifest("grpo")

    def cache_key(self, cfg: Config) -> str:
        paths = layout(cfg)
        sft = paths.adapter("sft")
        return hash_parts(cfg.section_hash("model", "grpo", "rewards", "rollout", "scaling", "format"),
                          upstream_key(paths.formatted_manifest), str(sft), fingerprint(sft))

    def run(self, cfg: Config) -> GRPOManifest:
        return train(cfg, key=self.cache_key(cfg))


STAGE = GRPOStage()
