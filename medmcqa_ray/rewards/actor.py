"""RewardActor: a Ray actor that loads the embedding model once and scores batches. RewardPool: splits a
batch over several actors; `score_async` returns handles so scoring can overlap the next generation."""

from __future__ import annotations

from typing import Optional

import ray

from medmcqa_ray.config import Markers, RewardsConfig
from medmcqa_ray.rewards.scoring import RewardBatch, RewardScores, Scorer


@ray.remote
class RewardActor:
    def __init__(self, cfg: RewardsConfig, markers: Markers):
        self.scorer = Scorer(cfg, markers)
        self.scored = 0

    def score(self, batch: RewardBatch) -> RewardScores:
        self.scored += len(batch.completions)
        return self.scorer.score(batch)

    def info(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"scored": self.scored, "actor_id": ctx.get_actor_id(), "node_id": ctx.get_node_id(),
                "similarity_scorer": self.scorer.similarity.kind,
                "components": self.scorer.names()}


class RewardPool:
    def __init__(self, cfg: RewardsConfig, markers: Markers, actor_options: Optional[dict] = None):
        # "DEFAULT": not captured into a Tune trial's placement group (see RolloutPool). A reward actor
        # holds no state a restart loses, so Ray re-runs a batch whose actor died mid-way on the
        # restarted one (max_task_retries) and the learner never sees the fault.
        options = {"num_cpus": cfg.num_cpus_per_actor, "max_restarts": 2, "max_task_retries": 2,
                   "scheduling_strategy": "DEFAULT"} | (actor_options or {})
        self.actors = [RewardActor.options(**options).remote(cfg, markers) for _ in range(cfg.num_actors)]

    def score_async(self, batch: RewardBatch) -> list[ray.ObjectRef]:
        """Start scoring (contiguous slices, one per actor) and return at once."""
        if not batch.completions:
            return [self.actors[0].score.remote(batch)]
        size = -(-len(batch.completions) // len(self.actors)) or 1
        return [a.score.remote(batch.slice(i * size, (i + 1) * size))
                for i, a in enumerate(self.actors) if i * size < len(batch.completions)]

    @staticmethod
    def gather(refs: list[ray.ObjectRef]) -> RewardScores:
        return RewardScores.merge(ray.get(refs))

    def score(self, batch: RewardBatch) -> RewardScores:
        return self.gather(self.score_async(batch))

    def info(self) -> list[dict]:
        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
