"""Reward actors really do the scoring (checked through Ray's state API), custom components included."""

import time

import pytest

from medmcqa_ray.config import load_config
from medmcqa_ray.rewards.scoring import RewardBatch, Scorer

from ..conftest import state_api
from .test_components import EXP, OPTS


@pytest.mark.slow
def test_pool_scores_in_actors_with_custom_component(ray_session):
    from ray.util.state import list_actors, list_tasks

    from medmcqa_ray.rewards.actor import RewardPool

    cfg = load_config([], ["rewards.num_actors=2", "rewards.num_cpus_per_actor=0.5",
                           "rewards.custom.cites_gold.path=tests.rewards.custom_reward:cites_gold",
                           "rewards.custom.cites_gold.weight=0.1"])
    completions = [f"Because ({g}) fits.<end_working_out><SOLUTION>{g}</SOLUTION>" for g in "ABCDABCDAB"]
    batch = RewardBatch(completions=completions, answer_labels=["A"] * 10, explanations=[EXP] * 10, options=[OPTS] * 10)
    pool = RewardPool(cfg.rewards, cfg.format.markers)
    try:
        scores = pool.score(batch)  # one slice per actor
        local = Scorer(cfg.rewards, cfg.format.markers).score(batch)
        assert scores.components["correct"] == local.components["correct"] == [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0, 0]
        assert scores.components["cites_gold"] == local.components["cites_gold"]
        assert scores.components["similarity"] == pytest.approx(local.components["similarity"], abs=1e-5)
        assert scores.similarity_scorer == "embedding"
        assert sum(i.scored for i in pool.info()) == 10

        actors = list_actors(filters=[("class_name", "=", "RewardActor"), ("state", "=", "ALIVE")], **state_api())
        assert len(actors) == 2
        ours = {a.actor_id for a in actors}

        def scored_by() -> set:
            tasks = list_tasks(filters=[("func_or_class_name", "=", "RewardActor.score")], **state_api())
            return {t.actor_id for t in tasks if t.state == "FINISHED"} & ours

        deadline = time.monotonic() + 60  # task events reach the state API in periodic batches
        while scored_by() != ours and time.monotonic() < deadline:
            time.sleep(1)
        assert scored_by() == ours  # both actors scored
        assert pool.score(RewardBatch(completions=[], answer_labels=[], explanations=[], options=[])).components["correct"] == []
    finally:
        pool.shutdown()
