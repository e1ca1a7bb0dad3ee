"""GRPO with 2 learners on a simulated cluster of 3 nodes x 2 CPUs, run in its own process by test_fit.py
(a `ray.cluster_utils.Cluster` cannot share a process with the test session's Ray). A learner with its
rollout and reward actor (0.5 CPU each) takes 2 CPUs: one node each. Ray Train alone packs both
learners on one node, where their actors, pinned to it, would wait forever. Prints one JSON line: the
GRPO manifest, the run's journal, every actor's node from Ray's state API, what the stage says of
learners whose actors (1 CPU each) fit no node, and the devices a learner holding a GPU unit (on a node
that declares 2 GPUs) gives its actors.

    python -m tests.scaling.small_nodes OUTPUT_DIR [key=value ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path, overrides: list[str]) -> dict:
    import ray
    from ray.util.state import list_actors

    from medmcqa_ray.config import load_config
    from medmcqa_ray.errors import StageError
    from medmcqa_ray.pipeline import run_stage
    from medmcqa_ray.runtime import configure_ray_data
    from medmcqa_ray.layout import layout
    from medmcqa_ray.training.capacity import check_resources
    from medmcqa_ray.training.journal import read_journal

    from ..conftest import REPO, state_api
    from ..evaluation.test_eval_stage import save_adapter
    from .multinode import cluster_with_dashboard

    cluster = cluster_with_dashboard(head_cpus=2)
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    configure_ray_data()

    def config(*more: str):
        return load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", "scaling.num_workers=2", *more])

    cfg = config("rollout.num_cpus_per_actor=0.5", "rewards.num_cpus_per_actor=0.5", *overrides)
    for stage in ("download", "prep"):
        run_stage(stage, cfg)
    save_adapter(cfg.model, layout(cfg).adapter("sft"))  # an untrained LoRA: what matters here is where GRPO runs
    try:
        check_resources(config())  # ci.yaml's actors: 1 CPU each, 3 CPUs a learner
        refused = ""
    except StageError as e:
        refused = str(e)
    manifest = run_stage("grpo", cfg)
    events = read_journal(Path(manifest.adapter))
    ids = [a["actor_id"] for e in events if e["event"] == "actors" for a in e["rollout"] + e["reward"]]
    actor_nodes = {a.actor_id: a.node_id for a in list_actors(limit=10_000, **state_api()) if a.actor_id in ids}
    cluster.add_node(num_cpus=1, num_gpus=2)  # Ray only counts these GPUs, and hands out their ids
    cluster.wait_for_nodes()
    gpus = gpu_unit(config("scaling.use_gpu=true", "scaling.resources_per_worker={CPU: 0.5, GPU: 1}",
                           "rollout.num_cpus_per_actor=0.25", "rollout.num_gpus_per_actor=1",
                           "rewards.num_cpus_per_actor=0.25"))
    ray.shutdown()
    cluster.shutdown()
    return {"manifest": manifest.as_dict(), "journal": events, "actor_nodes": actor_nodes, "refused": refused, "gpu_unit": gpus}


def gpu_unit(cfg) -> dict:
    """A stand-in learner holding a GPU unit's bundle (its GPU and its rollout actor's) gives its actors
    their devices: what each actor's CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS are, and the learner's ids."""
    import os

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from medmcqa_ray.training import placement

    @ray.remote
    class Probe:
        def env(self) -> dict:
            return {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}

    @ray.remote
    class Learner:
        def actors(self) -> dict:
            rollout = [Probe.options(**o).remote() for o in placement.rollout_options(cfg)]
            reward = Probe.options(**placement.reward_options(cfg)).remote()
            return {"learner_gpus": [str(i) for i in ray.get_gpu_ids()],
                    "rollout": ray.get([a.env.remote() for a in rollout]), "reward": ray.get(reward.env.remote())}

    unit = placement.worker_resources(cfg)
    group = placement_group([unit])
    ray.get(group.ready(), timeout=60)
    learner = Learner.options(num_cpus=unit["CPU"], num_gpus=unit["GPU"],
                              scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0)).remote()
    try:
        return ray.get(learner.actors.remote(), timeout=120) | {"unit": unit}
    finally:
        ray.kill(learner)
        remove_placement_group(group)


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), sys.argv[2:])
    print("RESULT " + json.dumps(result, default=str))
