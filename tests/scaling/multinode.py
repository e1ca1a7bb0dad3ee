"""A GRPO run with 2 learners on a simulated 3-node cluster, one node removed mid-run; run in its own
process by test_multinode.py (a `ray.cluster_utils.Cluster` cannot share a process with the test
session's Ray). Prints one JSON line: the GRPO manifest, the run's journal, the node that was removed,
from Ray's state API the node of every actor the learners created, and what a tensor-parallel engine
(vLLM's placement stood in for by tests/scaling/tp_standin) got on the two nodes that declare GPUs.

    python -m tests.scaling.multinode OUTPUT_DIR [key=value ...]
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

TP_STANDIN = Path(__file__).resolve().parent / "tp_standin"
"""Holds the stand-in `vllm` package (tensor-parallel placement only; see its README.md)."""


def main(out: Path, overrides: list[str]) -> dict:
    import ray
    from ray.util.state import list_actors

    from medmcqa_ray.config import load_config
    from medmcqa_ray.pipeline import run_stage
    from medmcqa_ray.runtime import configure_ray_data
    from medmcqa_ray.training.journal import read_journal

    from ..conftest import REPO, state_api
    from ..training.interrupt import registered_checkpoints

    # The head takes no learner; each of the 3 other nodes fits one learner (the custom `learner`
    # resource) with its rollout and reward actor beside it (3 CPUs).
    cluster = cluster_with_dashboard(head_cpus=2)
    nodes = {n.node_id: n for n in (cluster.add_node(num_cpus=3, resources={"learner": 1}) for _ in range(3))}
    # Two nodes that declare GPUs (none exist: Ray only counts them), for tensor-parallel engines.
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=2)
    cluster.add_node(num_cpus=0, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    configure_ray_data()
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", "scaling.num_workers=2",
                                                        "scaling.resources_per_worker={CPU: 1, learner: 1}", *overrides])
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)

    final = out / "checkpoints" / "grpo"
    removed: dict = {}

    def remove_a_learner_node() -> None:
        """Once Ray Train has registered a checkpoint (one every learner saved but the controller has
        not yet collected dies with a lost node) and the step after it has begun, take away rank 1's node."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            events = read_journal(final)
            steps = [e["step"] for e in events if e["event"] == "step" and e["rank"] == 0]
            if registered_checkpoints(out, "grpo") and steps and max(steps) >= cfg.grpo.save_steps + 1:
                node = [e["node"] for e in events if e["event"] == "start" and e["rank"] == 1][-1]
                removed["node"] = node
                cluster.remove_node(nodes[node])
                return
            time.sleep(0.2)

    remover = threading.Thread(target=remove_a_learner_node, daemon=True)
    remover.start()
    manifest = run_stage("grpo", cfg)
    remover.join(timeout=10)
    # SPREAD, on the same cluster: a learner's actors go to several nodes.
    from medmcqa_ray.rollout.actor import RolloutPool
    from medmcqa_ray.training.placement import actor_options

    spread_cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", "placement.strategy=SPREAD", "rollout.num_actors=3"])
    pool = RolloutPool(spread_cfg.model, spread_cfg.rollout, actor_options(spread_cfg))
    spread_nodes = [h.node_id for h in pool.health()]
    pool.shutdown()

    # The tensor-parallel part runs in a task on the head (no GPU) whose runtime env puts the stand-in
    # `vllm` first on the path, ahead of the real one installed in the venv, for it and for every actor it
    # starts (real vLLM cannot run tensor parallel over GPUs here; everything else uses the real one).
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    standin_vllm = {"env_vars": {"PYTHONPATH": f"{TP_STANDIN}:{REPO}"}}
    on_head = NodeAffinitySchedulingStrategy(node_id=cluster.head_node.node_id, soft=False)
    tensor_parallel = ray.get(ray.remote(tensor_parallel_engine).options(
        num_cpus=0, runtime_env=standin_vllm, scheduling_strategy=on_head).remote(out))
    tensor_parallel["refused"] = tensor_parallel_refused(out)

    events = read_journal(final)
    ids = [a["actor_id"] for e in events if e["event"] == "actors" for a in e["rollout"] + e["reward"]]
    actor_nodes = {a.actor_id: a.node_id for a in list_actors(limit=10_000, **state_api())
                   if a.actor_id in ids}
    ray.shutdown()
    cluster.shutdown()
    return {"manifest": manifest.as_dict(), "journal": events, "removed_node": removed.get("node"), "actor_nodes": actor_nodes,
            "learner_nodes": sorted(nodes), "spread_nodes": spread_nodes, "gpu_node": gpu_node.node_id,
            "tensor_parallel": tensor_parallel}


def cluster_with_dashboard(head_cpus: float):
    """A simulated cluster's head, with the dashboard (state API) on a free port: the test session's Ray has 8265."""
    import ray._common.utils
    from ray.cluster_utils import Cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": True,
                                                            "dashboard_port": dashboard_port})
    # Cluster writes its address to /tmp/ray/ray_current_cluster, where any plain ray.init() on this
    # machine (another test session's) would join it, or, once this process is killed, fail to join a
    # dead cluster. Our driver joins by cluster.address.
    address_file = Path(ray._common.utils.get_ray_address_file(None))
    if address_file.exists() and address_file.read_text() == cluster.gcs_address:
        address_file.unlink(missing_ok=True)
    return cluster


def tensor_parallel_config(out: Path, size: int):
    from medmcqa_ray.config import load_config

    from ..conftest import REPO

    return load_config([REPO / "configs" / "ci.yaml"], [
        f"output_dir={out}", "rollout.engine=vllm", f"rollout.num_gpus_per_actor={size}",
        f"rollout.tensor_parallel_size={size}", "grpo.temperature=1.0",
        "eval.scoring=generate"])  # the stand-in makes no prompt logprobs: placement is the point here


def tensor_parallel_refused(out: Path) -> str:
    """tensor_parallel_size=3 on a cluster with 3 GPUs, but no node with 3: refused before any work."""
    from medmcqa_ray.errors import StageError
    from medmcqa_ray.training.capacity import check_resources

    try:
        check_resources(tensor_parallel_config(out, 3))
    except StageError as e:
        return str(e)
    return ""


def tensor_parallel_engine(out: Path) -> dict:
    """A vLLM engine with tensor_parallel_size=2 (tests/scaling/tp_standin/vllm places its workers the way
    vLLM's Ray executor does), made by a pool the way a learner makes it (PACK: here the calling task's node,
    the head, which has no GPU); its actor killed once and restarted; then evaluation with such engines."""
    import ray
    import vllm
    from ray.util import placement_group_table
    from ray.util.state import list_actors

    from medmcqa_ray.evaluation.heads import evaluate_heads
    from medmcqa_ray.evaluation.stage import load_eval_rows
    from medmcqa_ray.rollout.actor import RolloutPool
    from medmcqa_ray.rollout.types import Sampling
    from medmcqa_ray.runtime import configure_ray_data
    from medmcqa_ray.training.placement import actor_options

    from ..conftest import state_api

    # The runtime env's PYTHONPATH must put the stand-in ahead of the real vLLM installed in the venv.
    vllm_file = Path(vllm.__file__).resolve()
    if not vllm_file.is_relative_to(TP_STANDIN):
        raise RuntimeError(f"the task imported {vllm_file}, not the stand-in under {TP_STANDIN}")
    configure_ray_data()

    cfg = tensor_parallel_config(out, 2)
    pool = RolloutPool(cfg.model, cfg.rollout, actor_options(cfg))
    sampling = Sampling(n=2, max_new_tokens=4)

    def snapshot() -> dict:
        generated = len(pool.generate([[1, 2, 3], [4, 5]], sampling))  # waits for the (restarted) engine
        health = pool.health()[0]
        group = placement_group_table(pool.groups[0])
        workers = [(a.node_id, a.state) for a in list_actors(filters=[("class_name", "=", "StandinRayWorker")],
                                                             limit=1000, **state_api())]
        return {"generated": generated, "actor_node": health.node_id, "pid": health.pid, "workers": sorted(workers),
                "group": {"strategy": group["strategy"], "bundles": group["bundles"],
                          "nodes": sorted(set(group["bundles_to_node_id"].values()))}}

    first = snapshot()
    ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it (max_restarts) inside the same group
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if pool.health()[0].pid != first["pid"]:
                break
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            pass
        time.sleep(0.5)
    second = snapshot()
    pool.shutdown()
    # Evaluation: Ray Data's predictors in such groups, two evaluations one after the other on the same GPUs.
    rows = load_eval_rows(cfg)
    evaluated = [len(evaluate_heads(cfg, rows, {"base": None})["base"]) for _ in range(2)]
    left = [g["state"] for g in placement_group_table().values() if g["state"] != "REMOVED"]
    return {"first": first, "second": second, "evaluated": evaluated, "rows": rows.num_rows,
            "groups_left": left, "vllm_file": str(vllm_file)}


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), sys.argv[2:])
    print("RESULT " + json.dumps(result, default=str))
