"""Reward weights as a sweep sees them: a trial's weights applied to the config, and the best trial's
as a config overlay (best.yaml)."""

from __future__ import annotations

from typing import Any

from medmcqa_ray.config import Config
from medmcqa_ray.rewards.registry import reward_specs


def with_weights(cfg: Config, weights: dict[str, float]) -> Config:
    """The config with these reward weights (built-in ones in rewards.weights, custom ones in their entry)."""
    rewards = cfg.rewards
    builtin = {s.name for s in reward_specs(rewards) if s.builtin}
    weights_ = rewards.weights | {k: v for k, v in weights.items() if k in builtin}
    custom = {k: c.model_copy(update={"weight": weights.get(k, c.weight)}) for k, c in rewards.custom.items()}
    return cfg.model_copy(update={"rewards": rewards.model_copy(update={"weights": weights_, "custom": custom})})


def overlay(cfg: Config, weights: dict[str, float]) -> dict[str, Any]:
    """The config overlay that sets these weights (`--config base.yaml --config best.yaml`)."""
    weighted = with_weights(cfg, weights).rewards
    out: dict[str, Any] = {"rewards": {"weights": dict(weighted.weights)}}
    if weighted.custom:
        out["rewards"]["custom"] = {k: {"weight": c.weight} for k, c in weighted.custom.items()}
    return out
