"""TRL's `rollout_func`: the learner's prompts go to the rollout actors once per distinct prompt for
`num_generations` samples, the completions to the reward actors, and TRL gets back token ids,
logprobs and one field per reward component (rewards/registry.py: REWARD_FIELD), which the reward
functions TRL is given only read. With grpo.dynamic_sampling, groups whose `correct` is the same for
every sample (no signal for GRPO) are sampled again.

One-step-off (grpo.max_off_policy_steps=1): having handed TRL step t's samples, the function sends the
next step's prompts (the trainer reads them a step ahead) to the rollout actors, which generate them with
step t's adapter while the learner trains; step t+1 collects them. Rewards and re-sampling run when they
are collected."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

from medmcqa_ray import metric_names as M
from medmcqa_ray.config import Config
from medmcqa_ray.formatting import generation_prompt, prompt_token_ids
from medmcqa_ray.reward_names import CORRECT
from medmcqa_ray.rewards.registry import REWARD_FIELD, reward_names
from medmcqa_ray.rewards.scoring import RewardBatch
from medmcqa_ray.rollout.types import Completion, Sampling
from medmcqa_ray.training.journal import journal
from medmcqa_ray.training.trl_metrics import step_buffer


def prompt_key(messages: list[dict]) -> str:
    """A prompt (chat messages) as a dict key: how a prompt TRL hands back finds its row."""
    return json.dumps([[m["role"], m["content"]] for m in messages])


def _zero_variance(values: list[Optional[float]]) -> bool:
    return len({v for v in values}) <= 1


@dataclass
class _Ahead:
    """The next step's generation, sent while this step trains."""

    step: int
    keys: list[str]
    pending: Any  # RolloutPool.submit's PendingGeneration


class RolloutFunction:
    """TRL's `rollout_func(prompts, trainer)`. TRL's sampler repeats each prompt `num_generations`
    times in a row; we generate once per distinct prompt with n = num_generations and return one
    completion per input row, in order."""

    def __init__(self, cfg: Config, tokenizer: Any, rows: list[dict], rollout_pool: Any, reward_pool: Any, rank: int,
                 num_generations: int, final_dir: Optional[str] = None):
        self.cfg, self.tokenizer, self.rank, self.n, self.final_dir = cfg, tokenizer, rank, num_generations, final_dir
        self.rows = {prompt_key(r["prompt"]): r for r in rows}
        self.rollout_pool, self.reward_pool = rollout_pool, reward_pool
        self.components = reward_names(cfg.rewards)
        self.finished_at = time.monotonic()  # the learner's step runs from here to the next call
        self.calls = 0
        self.restarts_seen = 0
        self.last_timing: dict[str, float] = {}
        self.ahead: Optional[_Ahead] = None

    def _sampling(self, step: int, round_: int) -> Sampling:
        g = self.cfg.grpo
        # A seed per (step, rank, round): a resumed run samples what the uninterrupted one would have.
        seed = (g.seed * 1_000_003 + step * 1009 + self.rank * 101 + round_) % 2**31
        return Sampling(n=self.n, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                        max_new_tokens=g.max_completion_length, seed=seed, tempered_logprobs=True)

    def _generate_and_score(self, prompts: list[list[int]], rows: list[dict], step: int, round_: int, metrics: dict):
        start = time.monotonic()  # the pool releases the learner's cached memory first (colocated)
        groups = self.rollout_pool.generate(prompts, self._sampling(step, round_))
        metrics[M.TIMING_GENERATE].append(time.monotonic() - start)
        return self._score(groups, rows, metrics)

    def _score(self, groups: list[list[Completion]], rows: list[dict], metrics: dict):
        n = self.n
        start = time.monotonic()
        flat = [c for g in groups for c in g]
        batch = RewardBatch(completions=[c.text for c in flat],
                            answer_labels=[r["answer_label"] for r in rows for _ in range(n)],
                            explanations=[r["explanation"] for r in rows for _ in range(n)],
                            options=[list(r["options"]) for r in rows for _ in range(n)])
        scores = self.reward_pool.score(batch)
        scores.check(self.cfg.rewards.max_error_rate)
        metrics[M.TIMING_REWARD].append(time.monotonic() - start)
        per_group = [{name: scores.components[name][i * n:(i + 1) * n] for name in self.components}
                     for i in range(len(groups))]
        return groups, per_group, scores.errors

    def _prompt_ids(self, distinct: list) -> list[list[int]]:
        # Token ids once: the rollout engines continue exactly these, and TRL's learner scores exactly these.
        return [prompt_token_ids(generation_prompt(p, self.tokenizer, self.cfg.format.markers), self.tokenizer)
                for p in distinct]

    def _send_ahead(self, trainer: Any, step: int) -> None:
        """One-step-off: the next step's prompts go to the actors now, to the adapter they hold (step's)."""
        self.ahead = None
        upcoming = getattr(trainer, "next_prompts", None)
        if not (self.cfg.grpo.max_off_policy_steps and upcoming) or step + 1 >= self.cfg.grpo.max_steps:
            return
        distinct = upcoming[::self.n]
        pending = self.rollout_pool.submit(self._prompt_ids(distinct), self._sampling(step + 1, 0))
        self.ahead = _Ahead(step=step + 1, keys=[prompt_key(p) for p in distinct], pending=pending)

    def _resample_flat_groups(self, groups: list, rewards: list, prompt_ids: list, rows: list, step: int,
                              metrics: dict) -> None:
        """Dynamic sampling: sample again, up to max_rounds times, the groups whose samples all scored
        the same `correct`; what is still flat after that trains as it is."""
        resampled = 0
        for round_ in range(1, self.cfg.grpo.dynamic_sampling.max_rounds + 1):
            flat = [i for i, r in enumerate(rewards) if _zero_variance(r[CORRECT])]
            if not flat:
                break
            resampled += len(flat)
            new_groups, new_rewards, _ = self._generate_and_score(
                [prompt_ids[i] for i in flat], [rows[i] for i in flat], step, round_, metrics)
            for i, g, r in zip(flat, new_groups, new_rewards):
                groups[i], rewards[i] = g, r
        metrics[M.RESAMPLED_GROUPS].append(resampled)
        metrics[M.FLAT_GROUPS_LEFT].append(sum(_zero_variance(r[CORRECT]) for r in rewards))

    def __call__(self, prompts: list, trainer: Any) -> dict[str, list]:
        n = self.n
        if len(prompts) % n or any(prompts[i] != prompts[i - i % n] for i in range(len(prompts))):
            raise RuntimeError(f"rollout_func expected each prompt {n} times in a row (TRL's RepeatSampler); "
                               f"got {len(prompts)} prompts")
        distinct = prompts[::n]
        rows = [self.rows[prompt_key(p)] for p in distinct]
        prompt_ids = self._prompt_ids(distinct)
        step = trainer.state.global_step
        if self.final_dir:  # the data order, step by step: a resumed run must continue it, not restart it
            journal(self.final_dir, "step", step=step + 1, prompt_ids=[r["id"] for r in rows])
        metrics: dict[str, list] = defaultdict(list)
        asked = time.monotonic()
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.step == step and ahead.keys == [prompt_key(p) for p in distinct]:
            groups = self.rollout_pool.collect(ahead.pending)  # generated while the last step trained
            metrics[M.TIMING_GENERATE].append(time.monotonic() - asked)
            groups, rewards, errors = self._score(groups, rows, metrics)
        else:
            if ahead is not None:  # what the trainer read ahead is what it hands over: anything else is a bug
                raise RuntimeError(f"one-step-off: step {step + 1}'s prompts differ from those generated ahead for "
                                   f"step {ahead.step + 1}")
            groups, rewards, errors = self._generate_and_score(prompt_ids, rows, step, 0, metrics)
        if self.cfg.grpo.dynamic_sampling.enabled:
            self._resample_flat_groups(groups, rewards, prompt_ids, rows, step, metrics)
        metrics[M.TIMING_LEARNER_WAIT].append(time.monotonic() - asked)
        self._send_ahead(trainer, step)
        metrics[M.FLAT_CORRECT_GROUPS].append(sum(_zero_variance(r[CORRECT]) for r in rewards) / len(rewards))

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
        metrics[M.POLICY_VERSION_LAG].append(max(lags))
        # Rollout actors found restarted since the last step (each was given the current adapter first).
        metrics[M.ACTOR_RESTARTS].append(self.rollout_pool.restarts - self.restarts_seen)
        self.restarts_seen = self.rollout_pool.restarts
        for name, count in errors.items():
            metrics[M.reward_errors(name)].append(count)
        for name, values in metrics.items():
            step_buffer(trainer)[name].append(sum(values))  # TRL averages these over each logging window
        self.last_timing = {k: sum(metrics[k]) for k in (M.TIMING_GENERATE, M.TIMING_REWARD, M.TIMING_LEARNER_WAIT)}
        self.calls += 1
        self.finished_at = time.monotonic()
        return out
