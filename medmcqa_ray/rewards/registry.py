"""The reward components, defined once: their names, weights and order. The Scorer computes them in this
order, TRL gets its reward functions and `reward_weights` in this order, and the sweep checks its space
against these names.

Order: the built-ins as reward_names.BUILTIN_REWARDS lists them (weight from `rewards.weights`, 0.0 when
absent: a weight of 0 still computes and logs the component), then `rewards.custom` in config order.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from medmcqa_ray.config import RewardsSection
from medmcqa_ray.reward_names import BUILTIN_REWARDS

REWARD_FIELD = "reward_{}"
"""The extra field, per component, in which the rollout hands TRL the precomputed scores."""


class RewardSpec(NamedTuple):
    name: str
    weight: float
    builtin: bool


def reward_specs(cfg: RewardsSection) -> list[RewardSpec]:
    return ([RewardSpec(name, cfg.weights.get(name, 0.0), True) for name in BUILTIN_REWARDS]
            + [RewardSpec(name, c.weight, False) for name, c in cfg.custom.items()])


def reward_names(cfg: RewardsSection) -> list[str]:
    return [s.name for s in reward_specs(cfg)]


def reward_weights(cfg: RewardsSection) -> list[float]:
    """TRL's `reward_weights`, in reward_names order."""
    return [s.weight for s in reward_specs(cfg)]


def _reads_field(name: str) -> Callable:
    def reward(completions, **kwargs):
        return kwargs[REWARD_FIELD.format(name)]

    reward.__name__ = name  # TRL logs rewards/<name>/mean and std
    return reward


def trl_reward_funcs(cfg: RewardsSection) -> list[Callable]:
    """TRL reward functions, in reward_names order, that read the scores the reward actors already
    computed from the field REWARD_FIELD.format(name)."""
    return [_reads_field(name) for name in reward_names(cfg)]
