"""Whether the cluster has room for the learners and their actors before any worker starts.

`check_resources` counts per node (a bundle is held on one node; the bundles are those of
training/placement.py) and then waits for the placement with a placement group shaped like Ray Train's:
without an autoscaler, a layout the nodes could never hold fails at once and one that does not fit now
fails after `placement.timeout_s`; with an autoscaler the stage waits (`placement.autoscaler_timeout_s`),
saying what for every `placement.log_interval_s`."""

from __future__ import annotations

import json
import logging
import time
from typing import Optional

from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError
from medmcqa_ray.rollout import tensor_parallel
from medmcqa_ray.training.placement import (EPS, Resources, reward_in_unit, reward_share, rollout_in_unit, rollout_share,
                                           total, worker_resources)

log = logging.getLogger(__name__)

KEYS = ("scaling.num_workers, scaling.resources_per_worker, rollout.num_actors, rollout.num_cpus_per_actor, "
        "rollout.num_gpus_per_actor, rewards.num_actors, rewards.num_cpus_per_actor, placement.strategy; "
        "ray.num_cpus for local Ray, `ray start --num-cpus` for a head started by hand")
Item = tuple[str, Resources]  # (what it is, for messages; what it needs on one node)


def _bundles(cfg: Config, copies: int = 1) -> list[Item]:
    """What Ray must place for the stage, each item on one node, labelled for messages."""
    pack = cfg.placement.strategy == "PACK"
    per_learner = [("a learner with its actors" if pack else "a learner", worker_resources(cfg))]
    if not rollout_in_unit(cfg):
        label = "a tensor-parallel engine" if tensor_parallel.uses_placement_group(cfg.rollout) else "a rollout actor"
        per_learner += [(label, rollout_share(cfg))] * cfg.rollout.num_actors
    if not reward_in_unit(cfg):
        per_learner += [("a reward actor", reward_share(cfg))] * cfg.rewards.num_actors
    return [item for item in per_learner if item[1]] * (cfg.scaling.num_workers * copies)


def _nodes(free: bool) -> list[Resources]:
    """Each live node's resources (total, or free now)."""
    from ray._private.state import available_resources_per_node, total_resources_per_node

    return list((available_resources_per_node() if free else total_resources_per_node()).values())


def _fit_count(items: list[Item], nodes: list[Resources]) -> int:
    """How many items fit on the nodes, each on one node (first fit, largest first)."""
    room = [dict(n) for n in nodes]
    placed = 0
    for _, need in sorted(items, key=lambda i: (i[1].get("GPU", 0.0), i[1].get("CPU", 0.0), sum(i[1].values())),
                          reverse=True):
        node = next((r for r in room if all(r.get(k, 0.0) + EPS >= v for k, v in need.items())), None)
        if node is not None:
            for k, v in need.items():
                node[k] -= v
            placed += 1
    return placed


def _shortfall(items: list[Item], nodes: list[Resources], free: bool) -> str:
    """What the nodes lack for the items ("" when they fit): the cluster's total, one node, or packing."""
    word = " free" if free else ""
    need, have = total([r for _, r in items]), total(nodes)
    short = [f"{k}: needs {v:g}, the cluster has {have.get(k, 0.0):g}{word}" for k, v in need.items()
             if v > have.get(k, 0.0) + EPS]
    if short:
        return ", ".join(short)
    largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in need}
    big = {f"{k}: needs {v:g} on one node for {label}, the largest node has {largest[k]:g}{word}"
           for label, r in items for k, v in r.items() if v > largest[k] + EPS}
    if big:
        return ", ".join(sorted(big))
    placed = _fit_count(items, nodes)
    if placed == len(items):
        return ""
    per_node = "; ".join(f"{k}: " + ", ".join(f"{n.get(k, 0.0):g}" for n in nodes) for k in sorted(need))
    return (f"a place on one node for each of {len(items)} bundles ({', '.join(sorted({l for l, _ in items}))}), "
            f"the nodes have room for {placed} (per node{word}, {per_node})")


def _describe(cfg: Config, copies: int) -> str:
    who = (f"{cfg.scaling.num_workers} learner(s), each with {cfg.rollout.num_actors} rollout and "
           f"{cfg.rewards.num_actors} reward actor(s)")
    return who if copies == 1 else f"{copies} concurrent trials (sweep.max_concurrent_trials) of {who}"


def check_resources(cfg: Config, copies: int = 1) -> None:
    """Fail, or wait, before any worker starts when the learners and their actors (`copies` runs of
    them at once) have no room: Ray would otherwise wait without a word for resources that never come."""
    import ray

    if not ray.is_initialized():
        return
    if bad := _gpu_bundle_misfit(cfg):
        raise StageError(bad)
    items, who = _bundles(cfg, copies), _describe(cfg, copies)
    lacking = _tensor_parallel_misfit(cfg)
    if not lacking and (short := _shortfall(items, _nodes(free=False), free=False)):
        lacking = f"{who} need {short} ({KEYS})"
    autoscaled = has_autoscaler()
    if lacking and not autoscaled:
        raise StageError(lacking)
    if lacking:
        log.warning("%s; waiting for the autoscaler to add nodes", lacking)
    _wait_for_room(cfg, items, who, autoscaled)


def _wait_for_room(cfg: Config, items: list[Item], who: str, autoscaled: bool) -> None:
    """Reserve what Ray Train and the actors will ask for (one bundle per item, packed, as Ray Train
    packs its group) and give it back once Ray could place it. The group is also the demand an
    autoscaler sees, whole units rather than a learner at a time."""
    from ray.util.placement_group import placement_group, remove_placement_group

    p = cfg.placement
    limit, key = (p.autoscaler_timeout_s, "placement.autoscaler_timeout_s") if autoscaled else (p.timeout_s, "placement.timeout_s")
    group = placement_group([r for _, r in items], strategy="PACK")
    start = time.monotonic()
    try:
        while not group.wait(_next_wait(p.log_interval_s, limit, time.monotonic() - start)):
            waited = time.monotonic() - start
            lacking = _shortfall(items, _nodes(free=True), free=True) or "room that is free now (Ray is placing it)"
            if limit is not None and waited >= limit - 0.01:
                raise StageError(f"{who} could not be placed within {limit:g} s ({key}, no autoscaler can add "
                                 f"nodes): they need {lacking} ({KEYS})")
            then = "an autoscaler may add nodes" if limit is None else f"giving up after {limit:g} s ({key})"
            log.warning("placement: waited %.1f s for %s: they need %s (%s); %s", waited, who, lacking, KEYS, then)
    finally:
        remove_placement_group(group)


def _next_wait(interval: float, limit: Optional[float], waited: float) -> float:
    return max(0.1, interval if limit is None else min(interval, limit - waited))


def has_autoscaler() -> bool:
    """Whether an autoscaler that can add nodes watches the cluster. Ray's monitor runs on every head;
    on a cluster started by hand (`ray start`, ray.init, ray.cluster_utils) it only mirrors the nodes
    there are, typing each node `node_<its id>`; an autoscaler types them by its configured node types
    (v1: the status it writes to GCS; v2: the cluster status)."""
    try:
        types = _node_types()
    except Exception as e:  # noqa: BLE001 - a status we cannot read: no autoscaler we can count on
        log.debug("placement: no autoscaler status (%s)", e)
        return False
    return any(kind != f"node_{node}" for node, kind in types.items())


def _node_types() -> dict[Optional[str], str]:  # v2 gives a pending node no node_id
    import ray
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        return {n.node_id: n.ray_node_type_name for n in status.active_nodes + status.idle_nodes}
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
    return report.get("node_type_mapping") or {}


def _gpu_bundle_misfit(cfg: Config) -> str:
    """Ray takes a fraction of a GPU only below one: a learner's bundle of 1.5 GPUs cannot be asked for."""
    gpus = worker_resources(cfg).get("GPU", 0.0)
    if gpus <= 1 + EPS or abs(gpus - round(gpus)) < EPS:
        return ""
    return (f"a learner with its actors in one bundle takes {gpus:g} GPUs; Ray needs a whole number above 1 "
            "(scaling.resources_per_worker GPU + rollout.num_actors x rollout.num_gpus_per_actor)")


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
