"""Where a learner's rollout and reward actors are scheduled (`placement.strategy`).

Each learner creates its own actors inside its Ray Train worker. Left to Ray's defaults they would be
captured into the worker's placement group bundle, where they never fit, so they always get an explicit
strategy: PACK pins them (softly) to the learner's node, SPREAD spreads them over the cluster."""

from __future__ import annotations

import logging
import os
from typing import Any

from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError
from medmcqa_ray.rollout import tensor_parallel

log = logging.getLogger(__name__)


def actor_options(cfg: Config) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if cfg.placement.strategy == "SPREAD":
        return {"scheduling_strategy": "SPREAD"}
    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True)}


def learner_group(cfg: Config) -> dict[str, float]:
    """The Ray resources one learner and its own rollout and reward actors ask for."""
    need = dict(cfg.scaling.resources_per_worker)
    if cfg.scaling.use_gpu and "GPU" not in need:
        need["GPU"] = 1.0  # Ray Train's default for use_gpu
    r, w = cfg.rollout, cfg.rewards
    need["CPU"] = need.get("CPU", 0.0) + r.num_actors * r.num_cpus_per_actor + w.num_actors * w.num_cpus_per_actor
    if r.num_gpus_per_actor:
        need["GPU"] = need.get("GPU", 0.0) + r.num_actors * r.num_gpus_per_actor
    return need


def check_resources(cfg: Config) -> None:
    """Fail before any worker starts when the learners and their actors cannot all fit: Ray would
    otherwise wait for resources that never come, and the run would hang without a word. On a
    cluster joined by address an autoscaler may add nodes, so there it is a warning."""
    import ray

    if not ray.is_initialized():
        return
    have = ray.cluster_resources()
    group = learner_group(cfg)
    short = {k: (v * cfg.scaling.num_workers, have.get(k, 0.0)) for k, v in group.items()
             if v * cfg.scaling.num_workers > have.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: needs {need:g}, the cluster has {got:g}" for k, (need, got) in short.items())
        message = (f"{cfg.scaling.num_workers} learner(s), each with {cfg.rollout.num_actors} rollout and "
                   f"{cfg.rewards.num_actors} reward actor(s), need {detail} (scaling.num_workers, "
                   "scaling.resources_per_worker, rollout.num_actors, rollout.num_cpus_per_actor, "
                   "rollout.num_gpus_per_actor, rewards.num_actors, rewards.num_cpus_per_actor; ray.num_cpus for local Ray)")
    else:
        message = _tensor_parallel_misfit(cfg)
    if not message:
        return
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        log.warning("%s; waiting for the cluster to grow", message)
        return
    raise StageError(message)


def _tensor_parallel_misfit(cfg: Config) -> str:
    """A tensor-parallel engine's GPUs must be on one node (rollout/tensor_parallel.py); enough GPUs in
    the cluster as a whole is not enough."""
    import ray

    if not tensor_parallel.uses_placement_group(cfg.rollout):
        return ""
    tp = cfg.rollout.tensor_parallel_size
    largest = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
    if largest >= tp:
        return ""
    return (f"rollout.tensor_parallel_size: {tp} GPUs per engine on one node, but no node has more than {largest:g} "
            "GPUs (lower rollout.tensor_parallel_size or add larger nodes)")
