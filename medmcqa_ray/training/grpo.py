"""GRPO on Ray Train: a TorchTrainer whose worker runs TRL's GRPOTrainer (TRL's loss), continuing the
SFT adapter, with generation in rollout actors and scoring in reward actors.

Each learner owns a RolloutPool and a RewardPool. TRL calls our `rollout_func` with the learner's
prompts; it asks the rollout actors once per distinct prompt for `num_generations` samples, sends the
completions to the reward actors, and hands TRL token ids, logprobs and one extra field per reward
component; the `reward_funcs` given to TRL only read those fields, and TRL's `reward_weights` weigh
them. After every optimiser step the LoRA tensors go to the rollout actors as a new policy version, so
generation is synchronous with training: `rollout/policy_version_lag` is 0 and
`rollout/logprob_abs_diff` (rollout vs learner logprobs of the sampled tokens) measures only numerics.

Dropout is off in the learner (TRL's `disable_dropout`): with LoRA dropout active, the learner would
score a different function from the one the rollout actors sample.

Checkpoints: `RayTrainReportCallback` as in SFT (checkpoints/ray/grpo/); a re-run restores the latest
and the HF Trainer continues at the same global step and data position. Final adapter in
`checkpoints/grpo/`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq

from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError
from medmcqa_ray.training.ray_run import fit, restored_checkpoint, save_final, training_info

log = logging.getLogger(__name__)

REWARD_FIELD = "reward_{}"


def sft_adapter(cfg: Config) -> Path:
    return Path(cfg.grpo.adapter or Path(cfg.output_dir) / "checkpoints" / "sft")


def training_prompts(cfg: Config) -> list[dict]:
    """Labelled formatted rows of grpo.split: the prompt and what the rewards need."""
    folder = Path(cfg.output_dir) / "data" / "formatted" / cfg.grpo.split
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise StageError(f"{folder} has no formatted shards: run download and prep first")
    columns = ["id", "prompt", "answer_label", "explanation", "options"]
    rows = [r for f in files for r in pq.read_table(f, columns=columns).to_pylist() if r["answer_label"]]
    if not rows:
        raise StageError(f"{folder}: the {cfg.grpo.split} split has no labelled rows, so GRPO has nothing to learn from")
    return rows[:cfg.grpo.limit] if cfg.grpo.limit else rows


def prompt_key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages])


def _zero_variance(values: list[Optional[float]]) -> bool:
    return len({v for v in values}) <= 1


class RolloutFunction:
    """TRL's `rollout_func(prompts, trainer)`. TRL's sampler repeats each prompt `num_generations`
    times in a row; we generate once per distinct prompt with n = num_generations and return one
    completion per input row, in order."""

    def __init__(self, cfg: Config, tokenizer: Any, rows: list[dict], rollout_pool: Any, reward_pool: Any, rank: int):
        from medmcqa_ray.rewards.scoring import Scorer

        self.cfg, self.tokenizer, self.rank = cfg, tokenizer, rank
        self.rows = {prompt_key(r["prompt"]): r for r in rows}
        self.rollout_pool, self.reward_pool = rollout_pool, reward_pool
        self.components = Scorer.names_for(cfg.rewards)
        self.finished_at = time.monotonic()
        self.calls = 0

    def _sampling(self, step: int, round_: int):
        from medmcqa_ray.rollout.types import Sampling

        g = self.cfg.grpo
        # A seed per (step, rank, round): a resumed run samples what the uninterrupted one would have.
        seed = (g.seed * 1_000_003 + step * 1009 + self.rank * 101 + round_) % 2**31
        return Sampling(n=g.num_generations, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                        max_new_tokens=g.max_completion_length, seed=seed, tempered_logprobs=True)

    def _generate_and_score(self, texts: list[str], rows: list[dict], step: int, round_: int, metrics: dict):
        from medmcqa_ray.rewards.scoring import RewardBatch

        n = self.cfg.grpo.num_generations
        start = time.monotonic()
        groups = self.rollout_pool.generate(texts, self._sampling(step, round_))
        metrics["timing/generate"].append(time.monotonic() - start)
        start = time.monotonic()
        flat = [c for g in groups for c in g]
        batch = RewardBatch(completions=[c.text for c in flat],
                            answer_labels=[r["answer_label"] for r in rows for _ in range(n)],
                            explanations=[r["explanation"] for r in rows for _ in range(n)],
                            options=[list(r["options"]) for r in rows for _ in range(n)])
        scores = self.reward_pool.score(batch)
        metrics["timing/reward"].append(time.monotonic() - start)
        per_group = [{name: scores.components[name][i * n:(i + 1) * n] for name in self.components}
                     for i in range(len(groups))]
        return groups, per_group, scores.errors

    def __call__(self, prompts: list, trainer: Any) -> dict[str, list]:
        from medmcqa_ray.formatting import generation_prompt

        n = self.cfg.grpo.num_generations
        if len(prompts) % n or any(prompts[i] != prompts[i - i % n] for i in range(len(prompts))):
            raise RuntimeError(f"rollout_func expected each prompt {n} times in a row (TRL's RepeatSampler); "
                               f"got {len(prompts)} prompts")
        distinct = prompts[::n]
        rows = [self.rows[prompt_key(p)] for p in distinct]
        texts = [generation_prompt(p, self.tokenizer, self.cfg.format.markers) for p in distinct]
        step = trainer.state.global_step
        metrics: dict[str, list] = defaultdict(list)
        groups, rewards, errors = self._generate_and_score(texts, rows, step, 0, metrics)

        ds = self.cfg.grpo.dynamic_sampling
        if ds.enabled:
            resampled = 0
            for round_ in range(1, ds.max_rounds + 1):
                flat = [i for i, r in enumerate(rewards) if _zero_variance(r["correct"])]
                if not flat:
                    break
                resampled += len(flat)
                new_groups, new_rewards, _ = self._generate_and_score(
                    [texts[i] for i in flat], [rows[i] for i in flat], step, round_, metrics)
                for i, g, r in zip(flat, new_groups, new_rewards):
                    groups[i], rewards[i] = g, r
            metrics["dynamic_sampling/resampled_groups"].append(resampled)
            metrics["dynamic_sampling/flat_groups_left"].append(sum(_zero_variance(r["correct"]) for r in rewards))
        metrics["rollout/flat_correct_groups"].append(sum(_zero_variance(r["correct"]) for r in rewards) / len(rewards))

        prompt_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        out |= {REWARD_FIELD.format(name): [] for name in self.components}
        lags = []
        for i, group in enumerate(groups):
            for j, c in enumerate(group):
                out["prompt_ids"].append(prompt_ids[i])
                out["completion_ids"].append(c.token_ids)
                out["logprobs"].append(c.logprobs)
                for name in self.components:
                    out[REWARD_FIELD.format(name)].append(rewards[i][name][j])
                lags.append(step - c.policy_version)
        metrics["rollout/policy_version_lag"].append(max(lags))
        for name, count in errors.items():
            metrics[f"rewards/{name}/errors"].append(count)
        for name, values in metrics.items():
            trainer._metrics["train"][name].append(sum(values))  # TRL averages these over each logging window
        self.calls += 1
        self.finished_at = time.monotonic()
        return out


def reward_funcs(components: list[str]) -> list:
    """TRL reward functions that read the scores the reward actors already computed."""

    def make(name: str):
        def reward(completions, **kwargs):
            return kwargs[REWARD_FIELD.format(name)]

        reward.__name__ = name  # TRL logs rewards/<name>/mean and std
        return reward

    return [make(name) for name in components]


def _callbacks(pool: Any, rollout: RolloutFunction):
    from transformers import TrainerCallback

    from medmcqa_ray.adapters import adapter_from_model
    from medmcqa_ray.rollout.types import AdapterUpdate

    class AdapterSync(TrainerCallback):
        """After every optimiser step (and at the start, or after a restore), the LoRA tensors go to the
        rollout actors as policy version = global step."""

        trainer: Any = None
        step_began = 0.0

        def sync(self, model: Any, version: int) -> float:
            start = time.monotonic()
            config, weights = adapter_from_model(model)
            pool.load_adapter(AdapterUpdate(version=version, peft_config=config), weights)
            return time.monotonic() - start

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.sync(model, state.global_step)

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_began = time.monotonic()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            train = time.monotonic() - rollout.finished_at
            seconds = self.sync(model, state.global_step)
            metrics = self.trainer._metrics["train"]
            metrics["timing/train"].append(train)
            metrics["timing/sync"].append(seconds)
            metrics["timing/step"].append(time.monotonic() - self.step_began)  # wall time, all of the above

    return AdapterSync()


def _trainer_class():
    from trl import GRPOTrainer

    class Trainer(GRPOTrainer):
        """TRL's GRPOTrainer, plus one metric: the mean absolute difference between the rollout actors'
        logprobs and the learner's own, on the sampled tokens, taken from the forward pass TRL's loss
        already makes (no extra compute)."""

        _last_logps = None

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            self._last_logps = out[0]
            return out

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            sampled = inputs.get("sampling_per_token_logps")
            if sampled is not None and self._last_logps is not None:
                mask = inputs["completion_mask"].bool()
                diff = (self._last_logps.detach().float() - sampled.float()).abs()[mask]
                if diff.numel():
                    self._metrics["train"]["rollout/logprob_abs_diff"].append(diff.mean().item())
            return loss

    return Trainer


def grpo_args(cfg: Config, output_dir: Path, device: str) -> Any:
    """TRL's GRPOConfig from the `grpo` section (also what benchmarks/grpo_step.py gives TRL alone)."""
    from trl import GRPOConfig

    from medmcqa_ray.rewards.scoring import reward_weights

    g = cfg.grpo
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=g.max_steps, per_device_train_batch_size=g.prompts_per_step * g.num_generations,
        gradient_accumulation_steps=1, num_generations=g.num_generations, learning_rate=g.learning_rate,
        beta=g.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high, loss_type=g.loss_type,
        importance_sampling_level=g.importance_sampling_level, scale_rewards=g.scale_rewards,
        temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, max_completion_length=g.max_completion_length,
        mask_truncated_completions=g.mask_truncated_completions, reward_weights=reward_weights(cfg.rewards),
        disable_dropout=True, logging_steps=1, save_strategy="steps", save_steps=g.save_steps, save_total_limit=1,
        report_to=[], seed=g.seed, bf16=device == "cuda", use_cpu=device == "cpu", dataloader_num_workers=0,
    )


def _train_loop(loop_config: dict) -> None:
    import datasets
    import ray.train
    import torch
    from peft import PeftModel
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from medmcqa_ray.models import load_model, load_tokenizer
    from medmcqa_ray.rewards.actor import RewardPool
    from medmcqa_ray.rollout.actor import RolloutPool

    cfg: Config = loop_config["cfg"]
    ctx = ray.train.get_context()
    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    rows = training_prompts(cfg)
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    tokenizer = load_tokenizer(cfg.model)
    model = PeftModel.from_pretrained(load_model(cfg.model, device), str(sft_adapter(cfg)), is_trainable=True)
    rollout_pool = RolloutPool(cfg.model, cfg.rollout)
    reward_pool = RewardPool(cfg.rewards, cfg.format.markers)
    rollout = RolloutFunction(cfg, tokenizer, rows, rollout_pool, reward_pool, ctx.get_world_rank())
    work = Path(tempfile.mkdtemp(prefix="grpo-"))
    args = grpo_args(cfg, work, device)
    sync = _callbacks(rollout_pool, rollout)
    trainer = _trainer_class()(model=model, reward_funcs=reward_funcs(rollout.components), args=args,
                               train_dataset=dataset, processing_class=tokenizer, rollout_func=rollout,
                               callbacks=[sync, RayTrainReportCallback()])
    sync.trainer = trainer
    trainer = prepare_trainer(trainer)
    resume, resumed_from = restored_checkpoint(work)
    try:
        trainer.train(resume_from_checkpoint=resume)
        if ctx.get_world_rank() == 0:
            save_final(trainer.model, Path(loop_config["final_dir"]),
                       {"log_history": trainer.state.log_history, "resumed_from_step": resumed_from,
                        "rollout_actors": rollout_pool.health(), "reward_actors": reward_pool.info()})
    finally:
        rollout_pool.shutdown()
        reward_pool.shutdown()


def check_config(cfg: Config) -> None:
    """What must hold before any worker starts."""
    from medmcqa_ray.adapters import read_adapter

    if cfg.rollout.engine == "vllm" and cfg.grpo.temperature != 1.0:
        raise StageError("grpo.temperature must be 1.0 with rollout.engine=vllm: vLLM reports raw logprobs, and "
                         "TRL's learner scores logits / temperature")
    read_adapter(sft_adapter(cfg))  # a clear error naming the folder when the SFT adapter is missing
    training_prompts(cfg)


def run_grpo(cfg: Config, key: str = "") -> dict:
    check_config(cfg)
    final = Path(cfg.output_dir).resolve() / "checkpoints" / "grpo"
    result, resuming = fit("grpo", _train_loop, cfg, key, final)
    info = training_info(final)
    history = info["log_history"]
    steps = [h for h in history if "rewards/correct/mean" in h]
    return {"stage": "grpo", "adapter": str(final), "init_adapter": str(sft_adapter(cfg)), "resumed": resuming,
            "resumed_from_step": info["resumed_from_step"], "steps": cfg.grpo.max_steps,
            "first_correct": steps[0]["rewards/correct/mean"] if steps else None,
            "last_correct": steps[-1]["rewards/correct/mean"] if steps else None,
            "rollout_actors": info["rollout_actors"], "reward_actors": info["reward_actors"],
            "history": history, "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}
