"""Scoring a batch of completions with every component: the work a RewardActor does, as a plain class
(the benchmark's in-process baseline uses it directly). Typed records cross the actor boundary."""

from __future__ import annotations

import logging
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Markers, RewardsSection
from medmcqa_ray.config.plugins import load_custom
from medmcqa_ray.errors import StageError
from medmcqa_ray.rewards import components
from medmcqa_ray.reward_names import SIMILARITY
from medmcqa_ray.rewards.registry import reward_names
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
    first_errors: dict[str, str] = {}
    """Per component that raised, its first error ("ValueError: ..."), for the message that stops a stage."""
    similarity_scorer: str

    @staticmethod
    def merge(parts: list["RewardScores"]) -> "RewardScores":
        """One batch's scores from its slices, in order. Slices scored by actors whose similarity scorers differ
        would mix two rewards in one step: that stops the stage."""
        kinds = [p.similarity_scorer for p in parts]
        if len(set(kinds)) > 1:
            raise RewardError(f"the reward actors score similarity differently ({', '.join(kinds)}, actor by actor): "
                              "one could not load the similarity model (set rewards.similarity_fallback=error to "
                              "see why)")
        names = list(parts[0].components)
        return RewardScores(
            components={n: [x for p in parts for x in p.components[n]] for n in names},
            errors={n: sum(p.errors.get(n, 0) for p in parts) for n in names},
            first_errors={n: e for p in reversed(parts) for n, e in p.first_errors.items()},
            similarity_scorer=kinds[0],
        )

    def check(self, max_error_rate: float) -> None:
        """Stop where a component raised on more than `max_error_rate` of these samples: training on, with that
        component silently missing, would optimise the others only."""
        n = len(next(iter(self.components.values()), []))
        for name, count in self.errors.items():
            if n and count / n > max_error_rate:
                raise RewardError(f"reward {name!r} raised on {count} of {n} samples of a step, above "
                                  f"rewards.max_error_rate={max_error_rate:g}; its first error: "
                                  f"{self.first_errors.get(name, 'not recorded')}")


class RewardError(StageError):
    """A reward cannot be trusted for a step: a component failing too often, or actors scoring differently."""


class Scorer:
    """Every component of `reward_specs(cfg)`, in that order: the per-completion built-ins
    (components.PER_COMPLETION), similarity (batch-wise), then the custom ones (batch-wise, TRL-style)."""

    def __init__(self, cfg: RewardsSection, markers: Markers):
        self.cfg, self.markers = cfg, markers
        self.similarity = SimilarityScorer(cfg.similarity_model, cfg.similarity_fallback)
        self.custom: dict[str, Callable] = {name: load_custom(c.path) for name, c in cfg.custom.items()}

    def names(self) -> list[str]:
        return reward_names(self.cfg)

    def score(self, batch: RewardBatch) -> RewardScores:
        errors = {name: 0 for name in self.names()}
        first: dict[str, str] = {}
        comps: dict[str, list[Optional[float]]] = {}
        for name in self.names():
            if name in components.PER_COMPLETION:
                comps[name] = self._per_completion(name, batch, errors, first)
            else:
                comps[name] = self._batch_wise(name, batch, errors, first)
        return RewardScores(components=comps, errors=errors, first_errors=first, similarity_scorer=self.similarity.kind)

    def _per_completion(self, name: str, batch: RewardBatch, errors: dict[str, int],
                        first: dict[str, str]) -> list[Optional[float]]:
        fn = components.PER_COMPLETION[name]
        out: list[Optional[float]] = []
        for i, completion in enumerate(batch.completions):
            try:
                out.append(float(fn(completion, batch.answer_labels[i], batch.options[i], self.markers)))
            except Exception as e:  # one odd completion must not stop training; many do (RewardScores.check)
                errors[name] += 1
                first.setdefault(name, f"{type(e).__name__}: {e}")
                log.warning("reward %s raised on completion %d: %s", name, i, e)
                out.append(None)
        return out

    def _batch_wise(self, name: str, batch: RewardBatch, errors: dict[str, int],
                    first: dict[str, str]) -> list[Optional[float]]:
        n = len(batch.completions)
        try:
            if name == SIMILARITY:
                reasonings = [components.reasoning_of(c, self.markers) for c in batch.completions]
                return list(self.similarity.score(reasonings, batch.explanations))
            values = list(self.custom[name](batch.completions, answer_label=batch.answer_labels,
                                            explanation=batch.explanations, options=batch.options))
            if len(values) != n:
                raise ValueError(f"returned {len(values)} values for {n} completions")
            return [None if v is None else float(v) for v in values]
        except Exception as e:
            errors[name] += n
            first.setdefault(name, f"{type(e).__name__}: {e}")
            log.warning("reward %s raised on a batch of %d: %s", name, n, e)
            return [None] * n
