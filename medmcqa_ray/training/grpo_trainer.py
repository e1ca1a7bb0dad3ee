"""TRL's GRPOTrainer as our learners run it: GRPOConfig from the `grpo` section, two more metrics, and
what one-step-off needs from the trainer (the next step's prompts ahead of time, TRL's importance
sampling on the rollout actors' logprobs).

Imported only where TRL runs (a Ray Train worker, benchmarks/grpo_step.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from trl import GRPOConfig, GRPOTrainer

from medmcqa_ray import metric_names as M
from medmcqa_ray.config import Config
from medmcqa_ray.models import trains_in_bf16
from medmcqa_ray.rewards.registry import reward_weights
from medmcqa_ray.training.trl_metrics import step_buffer


def _take(iterator: Iterator, count: int) -> list:
    batches = []
    for _ in range(count):
        try:
            batches.append(next(iterator))
        except StopIteration:
            break
    return batches


class RolloutGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer fed by rollout actors (TRL's `rollout_func`), plus:

    - rollout/logprob_abs_diff: the mean absolute difference between the rollout actors' logprobs and the
      learner's own on the sampled tokens, from the forward pass TRL's loss already makes;
    - with `off_policy`: the batch of the next optimiser step is read from the data loader one step ahead
      (`next_prompts`), so its generation can start while this step trains, and TRL's truncated importance
      sampling corrects for the adapter that generated it being one step old."""

    _last_logps = None
    _loss_inputs: Optional[dict] = None

    def __init__(self, *args: Any, off_policy: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.off_policy = off_policy
        self.next_prompts: Optional[list] = None
        self._ahead: Optional[tuple[Iterator, list]] = None
        if off_policy:
            # TRL multiplies its loss by the importance ratio (`vllm_importance_sampling_*`, from grpo_args) only
            # when it generates with vLLM itself. Our actors return the same sampling logprobs; the one other
            # thing the flag does with a rollout_func is TRL's own weight sync, which `_generate` keeps from
            # running: AdapterSync gives the actors each adapter.
            self.use_vllm = True

    def _generate(self, prompts: list):
        self._last_loaded_step = self.state.global_step
        return super()._generate(prompts)

    def _generate_and_score_completions(self, inputs):
        # With the correction on, TRL scores the new samples once more to get the learner's logprobs for the
        # ratio. Here a generation batch is one optimiser step (num_iterations 1, steps_per_generation = the
        # accumulation steps), so those logprobs are the training forward's own (TRL's _compute_loss says as
        # much): the ratio is taken there (`_importance_ratio`), and the extra forward pass is saved.
        self.vllm_importance_sampling_correction = False
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self.vllm_importance_sampling_correction = self.off_policy

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        """The HF Trainer's fetch of one optimiser step's batches. One-step-off fetches the step after as
        well and hands it out next time; at an epoch's end there is none ahead, and that step runs
        synchronously. The data order is the Trainer's: a restore skips the same batches either way."""
        if not self.off_policy:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._ahead is not None and self._ahead[0] is epoch_iterator:
            batches = self._ahead[1]
        else:
            batches = _take(epoch_iterator, num_batches)
        ahead = _take(epoch_iterator, num_batches)
        self._ahead = (epoch_iterator, ahead)
        # A step's batches are the same generation batch repeated (TRL's RepeatSampler): the first has its prompts.
        self.next_prompts = [row["prompt"] for row in ahead[0]] if ahead else None
        return batches, self._get_num_items_in_batch(batches, device)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        self._last_logps = out[0]
        if self._loss_inputs is not None and self.off_policy:
            self._loss_inputs["importance_sampling_ratio"] = self._importance_ratio(out[0].detach(), self._loss_inputs)
        return out

    def _importance_ratio(self, logps: torch.Tensor, inputs: dict) -> torch.Tensor:
        """TRL's importance ratio (its `vllm_importance_sampling_mode`s, as _generate_and_score_completions
        computes them) of the learner's policy to the rollout's on the sampled tokens, and its statistics."""
        mask = inputs["completion_mask"].bool()
        diff = torch.nan_to_num((logps - inputs["sampling_per_token_logps"]) * mask, nan=0.0)
        sequence = self.vllm_importance_sampling_mode.startswith("sequence")
        ratio = torch.exp(diff.sum(-1, keepdim=True) if sequence else diff)
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        outside = ((ratio < low) if low is not None else torch.zeros_like(ratio, dtype=torch.bool)) | \
            ((ratio > high) if high is not None else torch.zeros_like(ratio, dtype=torch.bool))
        if self.vllm_importance_sampling_mode.endswith("truncate"):
            ratio = torch.clamp(ratio, min=low, max=high)
        else:
            ratio = ratio.masked_fill(outside, 0.0)
        seen = ratio.flatten() if sequence else ratio[mask]
        counted = outside.flatten() if sequence else outside[mask]
        if seen.numel():
            metrics = step_buffer(self)
            metrics[M.IS_RATIO_MIN].append(seen.min().item())
            metrics[M.IS_RATIO_MEAN].append(seen.mean().item())
            metrics[M.IS_RATIO_MAX].append(seen.max().item())
            metrics[M.IS_RATIO_CLIPPED].append(counted.float().mean().item())
        return ratio

    def _compute_loss(self, model, inputs):
        self._loss_inputs = inputs
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._loss_inputs = None
        sampled = inputs.get("sampling_per_token_logps")
        if sampled is not None and self._last_logps is not None:
            diff = (self._last_logps.detach().float() - sampled.float()).abs()[inputs["completion_mask"].bool()]
            if diff.numel():
                step_buffer(self)[M.LOGPROB_ABS_DIFF].append(diff.mean().item())
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
        # One-step-off only: synchronous samples come from the adapter being trained.
        vllm_importance_sampling_correction=g.max_off_policy_steps > 0,
        vllm_importance_sampling_mode=g.off_policy_correction, vllm_importance_sampling_clip_max=g.off_policy_clip,
        disable_dropout=True, logging_steps=1, save_strategy="steps", save_steps=g.save_steps, save_total_limit=1,
        report_to=[], seed=g.seed, bf16=trains_in_bf16(cfg.model, device), use_cpu=device == "cpu",
        dataloader_num_workers=0,
    )
