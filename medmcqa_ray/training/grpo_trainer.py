"""TRL's GRPOTrainer as our learners run it: GRPOConfig from the `grpo` section, and one more metric.

Imported only where TRL runs (a Ray Train worker, benchmarks/grpo_step.py)."""

from __future__ import annotations

from pathlib import Path

from trl import GRPOConfig, GRPOTrainer

from medmcqa_ray import metric_names as M
from medmcqa_ray.config import Config
from medmcqa_ray.rewards.registry import reward_weights


class LogprobDiffGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer, plus rollout/logprob_abs_diff: the mean absolute difference between the
    rollout actors' logprobs and the learner's own, on the sampled tokens, taken from the forward pass
    TRL's loss already makes (no extra compute)."""

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
                self._metrics["train"][M.LOGPROB_ABS_DIFF].append(diff.mean().item())
        return loss


def grpo_args(cfg: Config, output_dir: Path, device: str) -> GRPOConfig:
    """TRL's GRPOConfig from the `grpo` section (also what benchmarks/grpo_step.py gives TRL alone).
    Dropout is off (`disable_dropout`): with LoRA dropout active, the learner would score a different
    function from the one the rollout actors sample."""
    g = cfg.grpo
    per_step = g.prompts_per_step * g.num_generations
    micro = g.micro_batch_size or per_step
    # TRL generates once per optimiser step (steps_per_generation defaults to the accumulation steps) and
    # trains the samples in micro-batches: what our rollout_func and AdapterSync expect.
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=g.max_steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_step // micro, num_generations=g.num_generations,
        gradient_checkpointing=g.gradient_checkpointing, learning_rate=g.learning_rate,
        beta=g.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high, loss_type=g.loss_type,
        importance_sampling_level=g.importance_sampling_level, scale_rewards=g.scale_rewards,
        temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, max_completion_length=g.max_completion_length,
        mask_truncated_completions=g.mask_truncated_completions, reward_weights=reward_weights(cfg.rewards),
        disable_dropout=True, logging_steps=1, save_strategy="steps", save_steps=g.save_steps, save_total_limit=1,
        report_to=[], seed=g.seed, bf16=device == "cuda", use_cpu=device == "cpu", dataloader_num_workers=0,
    )
