"""Names of the metrics the learners log (TRL's log history, our additions) and that stages, sweeps,
tables and MLflow read back: each defined once. TRL names a reward component's mean `rewards/<name>/mean`
after the reward function's __name__."""

from __future__ import annotations


def reward_mean(component: str) -> str:
    return f"rewards/{component}/mean"


def reward_errors(component: str) -> str:
    return f"rewards/{component}/errors"


LOSS = "loss"
ENTROPY = "entropy"
REWARD = "reward"  # TRL: the weighted sum's mean
CORRECT = reward_mean("correct")
FORMAT_EXACT = reward_mean("format_exact")
COMPLETION_LENGTH = "completions/mean_length"

POLICY_VERSION_LAG = "rollout/policy_version_lag"
LOGPROB_ABS_DIFF = "rollout/logprob_abs_diff"
ACTOR_RESTARTS = "rollout/actor_restarts"
FLAT_CORRECT_GROUPS = "rollout/flat_correct_groups"
RESAMPLED_GROUPS = "dynamic_sampling/resampled_groups"
FLAT_GROUPS_LEFT = "dynamic_sampling/flat_groups_left"
ADAPTERS_AGREE = "learners/adapters_agree"
# One-step-off, under TRL's names for them: the importance ratio learner / rollout policy on the sampled
# tokens (after truncation), and the share of ratios that the cap truncated (or the mask zeroed).
IS_RATIO_MEAN = "sampling/importance_sampling_ratio/mean"
IS_RATIO_MIN = "sampling/importance_sampling_ratio/min"
IS_RATIO_MAX = "sampling/importance_sampling_ratio/max"
IS_RATIO_CLIPPED = "sampling/importance_sampling_ratio/clipped_share"

SELECTION_ACCURACY = "selection_accuracy"
SELECTION_ACCURACY_STEP = "selection_accuracy_step"  # the step selection_accuracy was scored at (it is carried between scorings)

TIMING_GENERATE = "timing/generate"
TIMING_REWARD = "timing/reward"
TIMING_LEARNER_WAIT = "timing/learner_wait"  # asked for samples until it had them: generate (what was left), reward, resampling
TIMING_TRAIN = "timing/train"
TIMING_SYNC = "timing/sync"
TIMING_STEP = "timing/step"
TIMING_VALIDATE = "timing/validate"
TOKENS_PER_SECOND = "tokens_per_second"

STEP = "step"  # the global step in each Ray Train report: the sweep's time attribute
NUM_TOKENS = "num_tokens"  # TRL: tokens seen so far (SFT's tokens_per_second is its rate)
TRAIN_RUNTIME = "train_runtime"  # HF: only in the end-of-training summary log
