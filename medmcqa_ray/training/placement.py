"""Where a GRPO learner and its rollout and reward actors run (`placement.*`), and whether the cluster has
room for them before any worker starts.

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

`check_resources` counts per node (a bundle is held on one node) and then waits for the placement with
a placement group shaped like Ray Train's: without an autoscaler, a layout the nodes could never hold
fails at once and one that does not fit now fails after `placement.timeout_s`; with an autoscaler the
stage waits (`placement.autoscaler_timeout_s`), saying what for every `placement.log_interval_s`.
Outside a learner's placement group (a driver, a plain task) the actors get `actor_options`: PACK pins
them softly to the caller's node, SPREAD spreads them."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Optional

from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError
from medmcqa_ray.rollout import tensor_parallel

log = logging.getLogger(__name__)

EPS = 1e-9
KEYS = ("scaling.num_workers, scaling.resources_per_worker, rollout.num_actors, rollout.num_cpus_per_actor, "
        "rollout.num_gpus_per_actor, rewards.num_actors, rewards.num_cpus_per_actor, placement.strategy; "
        "ray.num_cpus for local Ray, `ray start --num-cpus` for a head started by hand")
Resources = dict[str, float]


# ------------------------------------------------------------------------------------------- shares


def _positive(resources: dict) -> Resources:
    return {k: float(v) for k, v in resources.items() if v}


def _total(parts: list[Resources]) -> Resources:
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
    return _total([learner_share(cfg)] + [rollout_share(cfg)] * cfg.rollout.num_actors
                  + [reward_share(cfg)] * cfg.rewards.num_actors)


def _rollout_in_unit(cfg: Config) -> bool:
    return cfg.placement.strategy == "PACK" and not tensor_parallel.uses_placement_group(cfg.rollout)


def _reward_in_unit(cfg: Config) -> bool:
    return cfg.placement.strategy == "PACK"


def worker_resources(cfg: Config) -> Resources:
    """Ray Train's resources_per_worker for a GRPO learner: its unit's bundle."""
    parts = [learner_share(cfg)]
    if _rollout_in_unit(cfg):
        parts += [rollout_share(cfg)] * cfg.rollout.num_actors
    if _reward_in_unit(cfg):
        parts += [reward_share(cfg)] * cfg.rewards.num_actors
    return _total(parts)


def creates_actors(loop: Any) -> bool:
    """Whether a Ray Train loop is GRPO's, whose learners create their actors (SFT's create none)."""
    return getattr(loop, "__module__", "") == "medmcqa_ray.training.grpo"


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
    bundle = _learner_bundle() if _rollout_in_unit(cfg) else None
    if bundle is None:
        return [actor_options(cfg)] * cfg.rollout.num_actors
    cpus = cfg.rollout.num_cpus_per_actor
    return [_in_bundle(bundle, cpus, gpus) for gpus in _rollout_gpu_ids(cfg)]


def reward_options(cfg: Config) -> dict[str, Any]:
    bundle = _learner_bundle() if _reward_in_unit(cfg) else None
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
    slices = []
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


# ------------------------------------------------------------------------------ before the workers


def _bundles(cfg: Config, copies: int = 1) -> list[tuple[str, Resources]]:
    """What Ray must place for the stage, each item on one node, labelled for messages."""
    pack = cfg.placement.strategy == "PACK"
    per_learner = [("a learner with its actors" if pack else "a learner", worker_resources(cfg))]
    if not _rollout_in_unit(cfg):
        label = "a tensor-parallel engine" if tensor_parallel.uses_placement_group(cfg.rollout) else "a rollout actor"
        per_learner += [(label, rollout_share(cfg))] * cfg.rollout.num_actors
    if not _reward_in_unit(cfg):
        per_learner += [("a reward actor", reward_share(cfg))] * cfg.rewards.num_actors
    return [item for item in per_learner if item[1]] * (cfg.scaling.num_workers * copies)


def _nodes(free: bool) -> list[Resources]:
    """Each live node's resources (total, or free now)."""
    from ray._private.state import available_resources_per_node, total_resources_per_node

    return list((available_resources_per_node() if free else total_resources_per_node()).values())


def _fit_count(items: list[tuple[str, Resources]], nodes: list[Resources]) -> int:
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


def _shortfall(items: list[tuple[str, Resources]], nodes: list[Resources], free: bool) -> str:
    """What the nodes lack for the items ("" when they fit): the cluster's total, one node, or packing."""
    word = " free" if free else ""
    need, have = _total([r for _, r in items]), _total(nodes)
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


def _wait_for_room(cfg: Config, items: list[tuple[str, Resources]], who: str, autoscaled: bool) -> None:
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


def _node_types() -> dict[str, str]:
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
