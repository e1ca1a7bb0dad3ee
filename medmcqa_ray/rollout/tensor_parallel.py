"""Where a tensor-parallel vLLM engine runs: one placement group per engine.

With `rollout.tensor_parallel_size` = tp > 1, vLLM runs tp workers, one per GPU, through its Ray executor
(`distributed_executor_backend="ray"`). That executor uses the placement group of the process that builds
the engine when there is one (vllm/v1/executor/ray_utils.py, `initialize_ray_cluster`): it needs at least
tp bundles of exactly one GPU, and the building process's node among them. So each rollout actor gets a
STRICT_PACK group (tensor parallelism needs the GPUs of one node) of tp one-GPU bundles, sits in bundle 0
holding only CPUs, and captures its child tasks so vLLM's workers land in the group's GPU bundles. This is
the layout Ray Data's own vLLM stage uses (ray.llm batch, `_ray_scheduling_strategy_fn`).
"""

from __future__ import annotations

from typing import Any, Optional

from medmcqa_ray.config import RolloutSection, resolve_engine


def uses_placement_group(rollout_cfg: RolloutSection) -> bool:
    return rollout_cfg.tensor_parallel_size > 1 and resolve_engine(rollout_cfg) == "vllm"


def engine_bundles(rollout_cfg: RolloutSection) -> list[dict[str, float]]:
    """Bundle 0 also holds the actor's CPUs; vLLM's workers ask for no CPU, one GPU each."""
    first = {"GPU": 1.0} | ({"CPU": rollout_cfg.num_cpus_per_actor} if rollout_cfg.num_cpus_per_actor else {})
    return [first] + [{"GPU": 1.0} for _ in range(rollout_cfg.tensor_parallel_size - 1)]


def engine_options(rollout_cfg: RolloutSection, near_node: Optional[str] = None) -> dict[str, Any]:
    """Ray actor options for one engine's actor, with its own new placement group. `near_node`: a node to
    prefer (placement.strategy PACK: the learner's), used only if the whole group fits there."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.placement_group(engine_bundles(rollout_cfg), strategy="STRICT_PACK",
                                     _soft_target_node_id=near_node)
    return {"num_cpus": rollout_cfg.num_cpus_per_actor, "num_gpus": 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}


class EngineGroups:
    """The groups for a Ray Data map's engines (evaluation): made up front, one per actor, handed out in
    turn by `ray_remote_args_fn`, removed when the map is done. Ray Data calls that function at each
    actor start and also just to read options (its issue detectors ask it for "memory"), so making a new
    group per call would leak groups that each hold tp GPUs, and a later head would wait forever for GPUs
    that nobody uses. Ray Data starts a pool's actors in one loop, so they get distinct groups."""

    def __init__(self, rollout_cfg: RolloutSection, count: int) -> None:
        self.options = [engine_options(rollout_cfg) for _ in range(count)]
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        options = self.options[self.calls % len(self.options)]
        self.calls += 1
        return options

    def remove(self) -> None:
        import ray

        for options in self.options:
            ray.util.remove_placement_group(options["scheduling_strategy"].placement_group)


def executor_backend(rollout_cfg: RolloutSection) -> Optional[str]:
    """vLLM's `distributed_executor_backend`: Ray's inside the placement group, else vLLM's default."""
    return "ray" if uses_placement_group(rollout_cfg) else None
