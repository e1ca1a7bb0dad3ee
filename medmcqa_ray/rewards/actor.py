"""RewardActor: a Ray actor that loads the embedding model once and scores batches. RewardPool: splits a
batch over its actors and waits for all of them.

Scoring never overlaps generation: GRPO is on-policy, so step t+1 generates only after step t's update
(which needs step t's scores) reaches the rollout actors."""

from __future__ import annotations

from typing import Optional

import ray
from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Markers, RewardsSection
from medmcqa_ray.rewards.scoring import RewardBatch, RewardScores, Scorer


class RewardActorInfo(BaseModel):
    """`RewardActor.info()`: where it runs, what it scored, and with what; the GRPO manifest keeps one per actor."""

    model_config = ConfigDict(extra="forbid")

    scored: int
    """Completions scored since the actor (re)started."""
    actor_id: str
    node_id: str
    similarity_scorer: str
    """Which similarity this actor loaded: the embedding model, or the token-overlap fallback."""
    components: list[str]
    """The reward components it scores, in the registry's order."""


@ray.remote
class RewardActor:
    def __init__(self, cfg: RewardsSection, markers: Markers):
        self.scorer = Scorer(cfg, markers)
        self.scored = 0

    def score(self, batch: RewardBatch) -> RewardScores:
        self.scored += len(batch.completions)
        return self.scorer.score(batch)

    def info(self) -> RewardActorInfo:
        ctx = ray.get_runtime_context()
        return RewardActorInfo(scored=self.scored, actor_id=ctx.get_actor_id(), node_id=ctx.get_node_id(),
                               similarity_scorer=self.scorer.similarity.kind, components=self.scorer.names())


class RewardPool:
    def __init__(self, cfg: RewardsSection, markers: Markers, actor_options: Optional[dict] = None):
        # "DEFAULT": not captured into a Tune trial's placement group (see RolloutPool). A reward actor
        # holds no state a restart loses, so Ray re-runs a batch whose actor died mid-way on the
        # restarted one (max_task_retries) and the learner never sees the fault.
        options = {"num_cpus": cfg.num_cpus_per_actor, "max_restarts": 2, "max_task_retries": 2,
                   "scheduling_strategy": "DEFAULT"} | (actor_options or {})
        # mypy ignores class decorators (python/mypy#3135): it sees the plain class, not Ray's ActorClass.
        self.actors = [RewardActor.options(**options).remote(cfg, markers)  # type: ignore[attr-defined]
                       for _ in range(cfg.num_actors)]

    def score(self, batch: RewardBatch) -> RewardScores:
        """Score contiguous slices, one per actor, in parallel; the merged scores keep the batch's order."""
        if not batch.completions:
            return ray.get(self.actors[0].score.remote(batch))
        size = -(-len(batch.completions) // len(self.actors))
        refs = [a.score.remote(batch.slice(i * size, (i + 1) * size))
                for i, a in enumerate(self.actors) if i * size < len(batch.completions)]
        return RewardScores.merge(ray.get(refs))

    def info(self) -> list[RewardActorInfo]:
        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
