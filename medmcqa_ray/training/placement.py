"""Where a GRPO learner and its rollout and reward actors run (`placement.*`): the Ray resources each
asks for, and the options each actor is created with.

A learner and its actors are one unit. With PACK the unit is one placement group bundle: Ray Train's
bundle for each learner is sized for the learner and its actors together (`worker_resources`), so Ray
puts each learner on a node where its actors fit too, or not at all. Ray Train V2 gives its worker the
whole bundle (the worker actor asks for exactly what the bundle holds, and no option changes that), so
the actors join a bundle of the learner's group on its node asking for nothing of their own: their
share is already in the learner's reservation. What Ray would otherwise derive from their own request
is set for them: OMP_NUM_THREADS from their CPUs, CUDA_VISIBLE_DEVICES from the learner's GPU ids
after the learner's own (Ray Train's learner device is its first GPU id); and the learner keeps to its
own share of threads. Tensor-parallel engines keep their own placement groups, near the learner
(rollout/tensor_parallel.py). With SPREAD the actors are not in the unit: they go across the cluster on
their own resources, and the learners are placed without regard to them.

Outside a learner's placement group (a driver, a plain task) the actors get `actor_options`: PACK pins
them softly to the caller's node, SPREAD spreads them. Whether the cluster has room for all of it before
any worker starts: training/capacity.py."""

from __future__ import annotations

import math
from typing import Any, Optional

from medmcqa_ray.config import Config
from medmcqa_ray.rollout import tensor_parallel


EPS = 1e-9
Resources = dict[str, float]


# ------------------------------------------------------------------------------------------- shares


def _positive(resources: dict) -> Resources:
    return {k: float(v) for k, v in resources.items() if v}


def total(parts: list[Resources]) -> Resources:
    out: Resources = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def learner_share(cfg: Config) -> Resources:
    need = dict(cfg.scaling.resources_per_worker)
    if cfg.scaling.use_gpu and "GPU" not in need:
        need["GPU"] = 1.0  # Ray Train's default for use_gpu
    return _positive(need)


def rollout_share(cfg: Config) -> Resources:
    """One rollout actor; for a tensor-parallel engine, its whole group (num_gpus_per_actor = tp)."""
    return _positive({"CPU": cfg.rollout.num_cpus_per_actor, "GPU": cfg.rollout.num_gpus_per_actor})


def reward_share(cfg: Config) -> Resources:
    return _positive({"CPU": cfg.rewards.num_cpus_per_actor})


def learner_group(cfg: Config) -> Resources:
    """The Ray resources one learner and its own rollout and reward actors ask for."""
    return total([learner_share(cfg)] + [rollout_share(cfg)] * cfg.rollout.num_actors
                  + [reward_share(cfg)] * cfg.rewards.num_actors)


def rollout_in_unit(cfg: Config) -> bool:
    return cfg.placement.strategy == "PACK" and not tensor_parallel.uses_placement_group(cfg.rollout)


def reward_in_unit(cfg: Config) -> bool:
    return cfg.placement.strategy == "PACK"


def worker_resources(cfg: Config) -> Resources:
    """Ray Train's resources_per_worker for a GRPO learner: its unit's bundle."""
    parts = [learner_share(cfg)]
    if rollout_in_unit(cfg):
        parts += [rollout_share(cfg)] * cfg.rollout.num_actors
    if reward_in_unit(cfg):
        parts += [reward_share(cfg)] * cfg.rewards.num_actors
    return total(parts)


# ------------------------------------------------------------------------------ inside the learner


def actor_options(cfg: Config) -> dict[str, Any]:
    """Actors outside the learner's bundle: PACK pins them (softly) to the caller's node, SPREAD spreads them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if cfg.placement.strategy == "SPREAD":
        return {"scheduling_strategy": "SPREAD"}
    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True)}


def rollout_options(cfg: Config) -> list[dict[str, Any]]:
    """One set of options per rollout actor of this learner."""
    bundle = _learner_bundle() if rollout_in_unit(cfg) else None
    if bundle is None:
        return [actor_options(cfg)] * cfg.rollout.num_actors
    cpus = cfg.rollout.num_cpus_per_actor
    return [_in_bundle(bundle, cpus, gpus) for gpus in _rollout_gpu_ids(cfg)]


def reward_options(cfg: Config) -> dict[str, Any]:
    bundle = _learner_bundle() if reward_in_unit(cfg) else None
    return _in_bundle(bundle, cfg.rewards.num_cpus_per_actor, None) if bundle else actor_options(cfg)


def keep_learner_share(cfg: Config) -> None:
    """Ray sets a worker's OMP_NUM_THREADS from the CPUs it holds, which for a learner is now its whole
    unit: keep torch to the learner's own share, as when it held only that."""
    if worker_resources(cfg) == learner_share(cfg):
        return
    import torch

    torch.set_num_threads(max(1, math.floor(learner_share(cfg).get("CPU", 0.0))))


def _learner_bundle() -> Optional[tuple[Any, int]]:
    """The calling learner's placement group and a bundle of it on the learner's node. Ray does not say
    which bundle a worker holds; the group's bundles are identical units and the actors take nothing
    from theirs, so one on the same node (by local rank, to share them out) is as good."""
    import ray
    from ray.util import placement_group_table

    group = ray.util.get_current_placement_group()
    if group is None:
        return None
    node = ray.get_runtime_context().get_node_id()
    here = sorted(int(i) for i, n in placement_group_table(group)["bundles_to_node_id"].items() if n == node)
    return (group, here[_local_rank() % len(here)]) if here else None


def _local_rank() -> int:
    try:
        import ray.train

        return ray.train.get_context().get_local_rank()
    except Exception:  # noqa: BLE001 - not in a Ray Train worker
        return 0


def _rollout_gpu_ids(cfg: Config) -> list[Optional[list[str]]]:
    """Each rollout actor's slice of the unit's GPUs, after the learner's share: Ray Train's learner
    device is its first GPU id, so the learner's share starts there and the actors' follow in order."""
    import ray

    each, count = cfg.rollout.num_gpus_per_actor, cfg.rollout.num_actors
    if not each:
        return [None] * count
    ids = [str(i) for i in ray.get_gpu_ids()]
    start = learner_share(cfg).get("GPU", 0.0)
    slices: list[Optional[list[str]]] = []
    for i in range(count):
        lo, hi = start + i * each, start + (i + 1) * each
        first = math.floor(lo + EPS)
        slices.append(ids[first:max(math.ceil(hi - EPS), first + 1)])
    return slices


def _in_bundle(bundle: tuple[Any, int], cpus: float, gpu_ids: Optional[list[str]]) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group, index = bundle
    env = {"OMP_NUM_THREADS": str(max(1, math.floor(cpus)))}
    if gpu_ids is not None:
        # An actor that asks for no GPU keeps the devices it inherits; Ray must not blank them.
        env |= {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    return {"num_cpus": 0, "num_gpus": 0, "runtime_env": {"env_vars": env},
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index, placement_group_capture_child_tasks=False)}
