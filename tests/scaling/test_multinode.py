"""Two GRPO learners on a simulated 3-node cluster (CPU only): their actors land where
`placement.strategy` says (PACK in the run, SPREAD for a pool made afterwards), after every step both
learners hold the same adapter, the final adapter is the one they agree on, and when a learner's node is
removed mid-run Ray Train restarts the learners from the last checkpoint on the nodes left and the run
completes its planned steps. On two more nodes that declare GPUs, a tensor-parallel vLLM engine (vLLM stood
in for by tests/scaling/tp_standin, whose signatures tests/rollout/test_vllm_standin.py checks against the
installed vLLM) gets its own placement group on one node, for rollout and for evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medmcqa_ray.adapters import adapter_checksum, read_adapter

from ..conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def test_two_learners_on_three_nodes_agree_and_survive_a_lost_node(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "tests.scaling.multinode", str(out), "sft.max_steps=2",
                        "grpo.max_steps=4", "grpo.save_steps=2", "grpo.max_completion_length=8", "placement.strategy=PACK"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    (tmp_path / "result.json").write_text(json.dumps(result, indent=1))  # for a failing assertion's reader
    m, events = result["manifest"], result["journal"]

    history = [h for h in m["history"] if "rewards/correct/mean" in h]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(h["rollout/policy_version_lag"] == 0 for h in history)

    # The lost node: it hosted learner rank 1; the learners restarted from the step-2 checkpoint, on
    # the two nodes left.
    starts = [e for e in events if e["event"] == "start"]
    assert result["removed_node"] in {e["node"] for e in starts if e["rank"] == 1}
    assert m["worker_restarts"] == 1 and m["worker_starts"][1]["resumed_from_step"] == 2
    restarted = [e for e in starts if e["resumed_from_step"] == 2]
    assert len(restarted) == 2 and result["removed_node"] not in {e["node"] for e in restarted}

    # PACK: every learner's rollout and reward actors ran on that learner's node (Ray's state API).
    placed = [e for e in events if e["event"] == "actors"]
    assert len(placed) == 4  # 2 learners x 2 starts
    for e in placed:
        for actor in e["rollout"] + e["reward"]:
            assert result["actor_nodes"][actor["actor_id"]] == e["node"], (e, actor)

    # SPREAD: three actors of one learner on the same cluster land on more than one node.
    assert len(result["spread_nodes"]) == 3 and len(set(result["spread_nodes"])) >= 2, result["spread_nodes"]

    # After every step both learners held the same adapter (the last time each step ran), and the
    # step log says so; the adapter written is that one.
    synced = {(e["step"], e["rank"]): e["adapter"] for e in events if e["event"] == "sync"}
    assert sorted(synced) == [(s, r) for s in range(1, 5) for r in (0, 1)]
    assert all(synced[(s, 0)] == synced[(s, 1)] for s in range(1, 5))
    assert all(h["learners/adapters_agree"] == 1.0 for h in history)
    assert all(f"timing/generate/rank{r}" in h for h in history for r in (0, 1))
    _, weights = read_adapter(out / "checkpoints" / "grpo")
    assert adapter_checksum(weights) == synced[(4, 0)]

    # Tensor parallel (vLLM stood in for): the engine's placement group is 2 one-GPU bundles, STRICT_PACK, on the
    # node with 2 GPUs (PACK preferred the driver's node, which has none); the actor in bundle 0 and both
    # of vLLM's workers there; after the actor is killed, Ray restarts it in the same group and the new
    # engine's workers take the same GPUs. An engine bigger than every node is refused up front.
    tp = result["tensor_parallel"]
    assert "tp_standin" in tp["vllm_file"], tp["vllm_file"]  # the stand-in, not the installed vLLM
    gpu_node = result["gpu_node"]
    for snap in (tp["first"], tp["second"]):
        assert snap["generated"] == 2 and snap["actor_node"] == gpu_node
        assert snap["group"] == {"strategy": "STRICT_PACK", "bundles": {"0": {"CPU": 1.0, "GPU": 1.0}, "1": {"GPU": 1.0}},
                                 "nodes": [gpu_node]}, snap["group"]
    assert tp["first"]["workers"] == [[gpu_node, "ALIVE"]] * 2
    assert tp["second"]["pid"] != tp["first"]["pid"]
    assert [w for w in tp["second"]["workers"] if w[1] == "ALIVE"] == [[gpu_node, "ALIVE"]] * 2
    assert "rollout.tensor_parallel_size: 3 GPUs per engine on one node, but no node has more than 2" in tp["refused"]
    # Evaluating two heads with such engines (Ray Data) frees each head's groups: no group is left.
    assert tp["evaluated"] == [tp["rows"]] * 2 and tp["rows"] > 0
    assert tp["groups_left"] == [], tp["groups_left"]
