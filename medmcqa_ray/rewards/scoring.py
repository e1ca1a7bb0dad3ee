"""Scoring a batch of completions with every component: the work a RewardActor does, as a plain class
(the benchmark's in-process baseline uses it directly). Typed records cross the actor boundary."""

from __future__ import annotations

import logging
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import BUILTIN_REWARDS, Markers, RewardsConfig
from medmcqa_ray.rewards import components
from medmcqa_ray.rewards.custom import load_custom
from medmcqa_ray.rewards.similarity import SimilarityScorer

log = logging.getLogger(__name__)


class RewardBatch(BaseModel):
    """Completions to score, with the row fields each one needs (parallel lists)."""

    model_config = ConfigDict(extra="forbid")
    completions: list[str]
    answer_labels: list[Optional[str]]
    explanations: list[Optional[str]]
    options: list[list[str]]

    def slice(self, start: int, stop: int) -> "RewardBatch":
        return RewardBatch(**{k: v[start:stop] for k, v in self.model_dump().items()})


class RewardScores(BaseModel):
    """Per-component scores (None where a scorer raised on that completion), and what happened."""

    model_config = ConfigDict(extra="forbid")
    components: dict[str, list[Optional[float]]]
    errors: dict[str, int]
    similarity_scorer: str

    @staticmethod
    def merge(parts: list["RewardScores"]) -> "RewardScores":
        names = list(parts[0].components)
        return RewardScores(
            components={n: [x for p in parts for x in p.components[n]] for n in names},
            errors={n: sum(p.errors.get(n, 0) for p in parts) for n in names},
            similarity_scorer=parts[0].similarity_scorer,
        )


class Scorer:
    def __init__(self, cfg: RewardsConfig, markers: Markers):
        self.cfg, self.markers = cfg, markers
        self.similarity = SimilarityScorer(cfg.similarity_model, cfg.similarity_fallback)
        self.custom: dict[str, Callable] = {name: load_custom(c.path) for name, c in cfg.custom.items()}

    def names(self) -> list[str]:
        return self.names_for(self.cfg)

    @staticmethod
    def names_for(cfg: RewardsConfig) -> list[str]:
        """Component order: built-ins, then custom ones. `correct` is always among them."""
        return [*BUILTIN_REWARDS, *cfg.custom]

    def _per_completion(self, fn: Callable[[int], float], n: int, name: str, errors: dict) -> list[Optional[float]]:
        out: list[Optional[float]] = []
        for i in range(n):
            try:
                out.append(float(fn(i)))
            except Exception as e:  # a scorer bug on one odd completion must not stop training
                errors[name] += 1
                log.warning("reward %s raised on completion %d: %s", name, i, e)
                out.append(None)
        return out

    def score(self, batch: RewardBatch) -> RewardScores:
        n, m = len(batch.completions), self.markers
        errors = {name: 0 for name in self.names()}
        comps = {
            "format_exact": self._per_completion(lambda i: components.format_exact(batch.completions[i], m), n, "format_exact", errors),
            "format_approx": self._per_completion(lambda i: components.format_approx(batch.completions[i], m), n, "format_approx", errors),
            "correct": self._per_completion(
                lambda i: components.correct(batch.completions[i], batch.answer_labels[i], batch.options[i], m), n, "correct", errors),
        }
        try:
            reasonings = [components.reasoning_of(c, m) for c in batch.completions]
            comps["similarity"] = list(self.similarity.score(reasonings, batch.explanations))
        except Exception as e:
            errors["similarity"] += n
            log.warning("reward similarity raised on a batch of %d: %s", n, e)
            comps["similarity"] = [None] * n
        for name, fn in self.custom.items():
            try:
                values = list(fn(batch.completions, answer_label=batch.answer_labels, explanation=batch.explanations,
                                 options=batch.options))
                if len(values) != n:
                    raise ValueError(f"returned {len(values)} values for {n} completions")
                comps[name] = [None if v is None else float(v) for v in values]
            except Exception as e:
                errors[name] += n
                log.warning("custom reward %s raised: %s", name, e)
                comps[name] = [None] * n
        return RewardScores(components=comps, errors=errors, similarity_scorer=self.similarity.kind)


def reward_weights(cfg: RewardsConfig) -> list[float]:
    """TRL's reward_weights, in Scorer.names() order (a built-in missing from rewards.weights weighs 0)."""
    return [cfg.weights.get(name, 0.0) for name in BUILTIN_REWARDS] + [c.weight for c in cfg.custom.values()]
