"""A GRPO stage whose learners and actors have no room says so instead of waiting without a word, and
one that has room is placed as whole units (a learner with its rollout and reward actors, one
placement group bundle each, training/placement.py):

- capacity is counted per node: units that fit the cluster's total but no node, or not all its nodes;
- on a local Ray with room in total but not free now, the stage says what it waits for at intervals and
  fails after `placement.timeout_s`;
- `ray job submit` of GRPO to a real `ray start --head --num-cpus 2` (no autoscaler) fails at once,
  naming the CPUs lacking and the keys that size them;
- the same job on a real head with an autoscaler (Ray's own, with its fake multi-node provider, which
  starts the nodes it adds as processes on this machine) waits, saying what for at intervals, until
  the autoscaler has added a node, then runs there;
- 2 learners on a simulated cluster of 3 nodes x 2 CPUs each get a node of their own, with their actors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from medmcqa_ray.config import load_config
from medmcqa_ray.errors import StageError
from medmcqa_ray.training import capacity, placement

from ..conftest import REPO
from ..test_jobs import BIN, env, free_port, serving  # noqa: F401 - env is a fixture

CI = REPO / "configs" / "ci.yaml"
TINY_GRPO = ["grpo.max_steps=1", "grpo.save_steps=1", "grpo.max_completion_length=8"]


def config(out: Path, *overrides: str, base: Path = CI):
    return load_config([base], [f"output_dir={out}", *overrides])


def shortfall(cfg, nodes: list[dict]) -> str:
    return capacity._shortfall(capacity._bundles(cfg), nodes, free=False)


def test_capacity_is_counted_per_node(tmp_path):
    two_cpus = [{"CPU": 2.0}]
    # configs/local.yaml on a 2-core laptop: learner 2 + rollout actor 2 + reward actor 1.
    assert shortfall(config(tmp_path, base=REPO / "configs" / "local.yaml"), two_cpus) == "CPU: needs 5, the cluster has 2"
    three_small = [{"CPU": 2.0}] * 3
    # 6 CPUs in all for 2 x 3, but a learner and its actors are one bundle, and no node holds 3.
    assert shortfall(config(tmp_path, "scaling.num_workers=2"), three_small) == \
        "CPU: needs 3 on one node for a learner with its actors, the largest node has 2"
    half = ["rollout.num_cpus_per_actor=0.5", "rewards.num_cpus_per_actor=0.5"]  # 2 CPUs a learner
    assert shortfall(config(tmp_path, "scaling.num_workers=3", *half), three_small) == ""
    # 3 x 2 CPUs fit 6 CPUs in all, not 2 nodes of 3.
    assert "the nodes have room for 2" in shortfall(config(tmp_path, "scaling.num_workers=3", *half), [{"CPU": 3.0}] * 2)
    # SPREAD: the learners' bundles hold only the learners; the actors are placed one by one.
    spread = config(tmp_path, "scaling.num_workers=2", "placement.strategy=SPREAD")
    assert placement.worker_resources(spread) == {"CPU": 1.0}
    assert shortfall(spread, three_small) == ""
    # A GPU unit: the learner's GPU and its rollout actors' in one bundle.
    gpu = config(tmp_path, "scaling.use_gpu=true", "scaling.resources_per_worker={CPU: 2, GPU: 1}",
                 "rollout.num_gpus_per_actor=1", "rollout.num_actors=3")
    assert placement.worker_resources(gpu) == {"CPU": 6.0, "GPU": 4.0}
    half_gpu = config(tmp_path, "scaling.use_gpu=true", "scaling.resources_per_worker={GPU: 1}", "rollout.num_gpus_per_actor=0.5")
    assert "1.5 GPUs" in capacity._gpu_bundle_misfit(half_gpu)


@pytest.mark.slow
def test_no_room_now_waits_saying_what_for_then_fails_after_the_timeout(ray_session, tmp_path, caplog):
    """Room in total (the session's 6 CPUs for a learner's 3) but not free: Ray would wait without end."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    assert not capacity.has_autoscaler()  # a local Ray: its monitor only mirrors the node there is
    free = ray.available_resources().get("CPU", 0.0)
    if free < 3:
        pytest.skip(f"the session's Ray has {free:g} CPUs free")
    held = placement_group([{"CPU": free - 2}])
    assert held.wait(30)
    cfg = config(tmp_path / "out", "placement.timeout_s=3", "placement.log_interval_s=1")
    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger=capacity.__name__):
            with pytest.raises(StageError, match=r"could not be placed within 3 s \(placement.timeout_s.*"
                                                 r"CPU: needs 3, the cluster has 2 free \(scaling.num_workers"):
                capacity.check_resources(cfg)
    finally:
        remove_placement_group(held)
    assert time.monotonic() - start < 15
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("placement: waited")]
    assert len(waits) >= 2 and all("CPU: needs 3, the cluster has 2 free" in w for w in waits), waits


# ---------------------------------------------------------------------------------- real heads


@contextlib.contextmanager
def head(env: dict, autoscaler: dict | None = None):
    """`ray start --head --num-cpus 2` with its own temp dir and ports, as tests/test_jobs.py's ray_head, and
    with `autoscaler` (an autoscaling config for Ray's fake multi-node provider) an autoscaler; yields
    the dashboard address."""
    temp = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    dashboard, gcs = free_port(), free_port()
    ports = {"--port": gcs, "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--min-worker-port=22000",
           "--max-worker-port=22999", *[f"{k}={v}" for k, v in ports.items()]]
    if autoscaler:
        (temp / "autoscaler.json").write_text(json.dumps(fake_provider(autoscaler, gcs)))
        cmd.append(f"--autoscaling-config={temp / 'autoscaler.json'}")
        # The fake provider starts nodes only under RAY_FAKE_CLUSTER; a 5 s update interval leaves the
        # stage a few seconds to wait before the node is up.
        env = env | {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "5"}
    address = f"http://127.0.0.1:{dashboard}"
    with serving(cmd, env, f"{address}/api/version", temp):
        yield address


def fake_provider(node_types: dict, gcs_port: int) -> dict:
    """An autoscaling config for Ray's fake multi-node provider (it starts the nodes it adds as processes
    on this machine): the 2-CPU head and `node_types`."""
    empty = {k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                             "rsync_exclude", "rsync_filter")}
    return {"cluster_name": "fit", "max_workers": 4, "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {},
            "auth": {}, "file_mounts": {}, "file_mounts_sync_continuously": False, "head_node_type": "ray.head.default",
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
                                     **node_types}} | empty


def submit_grpo(address: str, env: dict, submission_id: str, *args: str, working_dir: bool = True) -> None:
    """`ray job submit --no-wait` of the grpo stage with configs/ci.yaml; without `working_dir` the job runs
    the package installed here (editable: this checkout)."""
    runtime_env = json.dumps({"env_vars": {k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}})
    ship = ["--working-dir", "."] if working_dir else []
    subprocess.run([str(BIN / "ray"), "job", "submit", "--no-wait", "--address", address, "--submission-id", submission_id,
                    *ship, "--runtime-env-json", runtime_env, "--", "python", "-m", "medmcqa_ray.cli", "grpo",
                    "--config", str(CI), *args],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=120)


def outcome(address: str, submission_id: str, timeout_s: float) -> tuple[str, str]:
    """The job's final status and logs; a job still running after `timeout_s` is stopped and reported
    as such (what the code before this change did: wait without end)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while not client.get_job_status(submission_id).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            return f"STILL RUNNING after {timeout_s:g} s", client.get_job_logs(submission_id)
        time.sleep(1)
    return str(client.get_job_status(submission_id)), client.get_job_logs(submission_id)


@pytest.fixture(scope="module")
def grpo_ready(ray_session, tmp_path_factory) -> Path:
    """An output_dir with the formatted data and an (untrained) SFT adapter: all a GRPO stage needs."""
    from medmcqa_ray.pipeline import run_stage
    from medmcqa_ray.layout import layout

    from ..evaluation.test_eval_stage import save_adapter

    out = tmp_path_factory.mktemp("fit") / "out"
    cfg = config(out)
    for stage in ("download", "prep"):
        run_stage(stage, cfg)
    save_adapter(cfg.model, layout(cfg).adapter("sft"))
    return out


@pytest.mark.slow
def test_job_on_a_head_too_small_fails_at_once_naming_what_it_lacks(grpo_ready, env):  # noqa: F811
    with head(env) as address:
        start = time.monotonic()
        submit_grpo(address, env, "grpo-too-small", f"output_dir={grpo_ready}")
        status, logs = outcome(address, "grpo-too-small", timeout_s=240)
    assert status == "FAILED", (status, logs[-3000:])
    # ci.yaml: a learner (1 CPU) with a rollout and a reward actor (1 CPU each) on a head of 2 CPUs.
    assert "need CPU: needs 3, the cluster has 2 (scaling.num_workers, scaling.resources_per_worker, rollout.num_actors, " \
           "rollout.num_cpus_per_actor" in logs, logs[-3000:]
    assert time.monotonic() - start < 150


def node_resources(address: str) -> dict[str, dict]:
    """Each node's total resources, from the head's state API."""
    body = json.loads(urllib.request.urlopen(f"{address}/api/v0/nodes?detail=1", timeout=30).read())
    return {n["node_id"]: n["resources_total"] for n in body["data"]["result"]["result"]}


@pytest.mark.slow
@pytest.mark.extended
def test_job_waits_for_the_autoscaler_saying_what_for_then_runs_on_its_node(grpo_ready, env, tmp_path):  # noqa: F811
    with head(env, autoscaler={"cpu4": {"resources": {"CPU": 4}, "node_config": {}, "min_workers": 0, "max_workers": 1}}) \
            as address:
        # No working_dir: the fake provider's nodes share the head's session folder, and the added node,
        # unpacking the job's working_dir again for the learner, would replace the folder the driver runs in.
        submit_grpo(address, env, "grpo-autoscaled", f"output_dir={grpo_ready}", "placement.log_interval_s=0.5",
                    *TINY_GRPO, working_dir=False)
        status, logs = outcome(address, "grpo-autoscaled", timeout_s=420)
        nodes = node_resources(address)
    (tmp_path / "job.log").write_text(logs)  # for a failing assertion's reader
    assert status == "SUCCEEDED", (status, logs[-3000:])
    assert "need CPU: needs 3, the cluster has 2 (scaling.num_workers" in logs and \
        "waiting for the autoscaler to add nodes" in logs, logs[-3000:]
    waits = [line for line in logs.splitlines() if "placement: waited" in line]
    assert len(waits) >= 2 and all("an autoscaler may add nodes" in w for w in waits), logs[-3000:]
    # The learner ran with its actors on the node the autoscaler added (4 CPUs), not on the head (2).
    from medmcqa_ray.training.journal import read_journal

    events = read_journal(grpo_ready / "checkpoints" / "grpo")
    placed = [e for e in events if e["event"] == "actors"]
    assert placed and all(nodes[e["node"]].get("CPU") == 4 for e in placed), (placed, nodes)
    assert all(a["node_id"] == e["node"] for e in placed for a in e["rollout"] + e["reward"])


@pytest.mark.slow
@pytest.mark.extended
def test_two_learners_on_three_two_cpu_nodes_get_a_node_each_with_their_actors(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "tests.scaling.small_nodes", str(out), *TINY_GRPO],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len([h for h in result["manifest"]["history"] if "rewards/correct/mean" in h]) == 1
    placed = {e["rank"]: e for e in result["journal"] if e["event"] == "actors"}
    assert sorted(placed) == [0, 1] and placed[0]["node"] != placed[1]["node"], placed
    for e in placed.values():
        for actor in e["rollout"] + e["reward"]:
            assert result["actor_nodes"][actor["actor_id"]] == e["node"], (e, actor)
    # A GPU unit (learner GPU 1 + rollout actor GPU 1): the learner holds both GPU ids; its rollout actor,
    # asking for none, sees the second (the learner's device is the first); the reward actor none set.
    gpus = result["gpu_unit"]
    assert gpus["unit"] == {"CPU": 1.0, "GPU": 2.0} and len(gpus["learner_gpus"]) == 2, gpus
    assert gpus["rollout"] == [{"CUDA_VISIBLE_DEVICES": gpus["learner_gpus"][1], "OMP_NUM_THREADS": "1"}], gpus
    assert gpus["reward"]["OMP_NUM_THREADS"] == "1" and gpus["reward"]["CUDA_VISIBLE_DEVICES"] != gpus["learner_gpus"][1]
    # ci.yaml's own actors (1 CPU each) make a learner 3 CPUs, which no node holds: refused, per node.
    assert "CPU: needs 3 on one node for a learner with its actors, the largest node has 2 (scaling.num_workers" \
        in result["refused"], result["refused"]
