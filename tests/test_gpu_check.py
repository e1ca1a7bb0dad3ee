"""benchmarks/gpu_check.py end to end on CPU: the tiny model, two real TRL GRPO steps with LoRA, the hf
engine generating with the trained adapter and agreeing with the learner's logprobs. The installed
packages are used (no --wheels); the device run of the same script is described in its docstring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--threads", "1",
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["pass"] is True and result["failures"] == [], result
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["grpo"]["steps"] == 2 and len(result["grpo"]["step_s"]) == 2
    assert result["grpo"]["lora_b_max_abs"] > 0
    lp = result["logprobs"]
    assert lp["tokens_compared"] > 0
    assert lp["max_abs_diff"] <= lp["tolerance"] == 1e-4
    assert lp["base_max_abs_diff"] > 10 * lp["tolerance"]  # the adapter reached the engine
    assert result["engine"]["policy_version"] == 1
    assert result["ray_imported"] is False
    assert result["memory"]["peak_rss_mib"] > 0
    assert {"torch", "transformers", "trl", "peft"} <= set(result["versions"])


@pytest.mark.slow
def test_plan_check_runs_on_cpu_with_exact_counts(tmp_path):
    """`--shape tiny`: the device's memory-plan measurement at ci.yaml's sizes, through TRL with our argument
    builders; on CPU the counts are checked exactly (memory stats need CUDA)."""
    out = tmp_path / "plan_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--shape", "tiny", "--threads", "1",
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["pass"] is True and result["failures"] == [], result
    plan, exact = result["plan"], result["exact"]
    assert exact["parameters"] == plan["parameters"] and exact["lora_parameters"] == plan["lora_parameters"]
    assert exact["optimizer_bytes"] == plan["phases"]["adapter_sync"]["learner.optimizer"] == 8 * plan["lora_parameters"]
    assert set(result["phases"]) == {"weights", "grpo_train", "adapter_sync", "sft_train"}
    # Where CPU and the plan compare: each step's own allocations (profiler timeline) against the plan for CPU.
    # Both are mostly TRL's fused LM head here (the tiny model's 49,152-token vocabulary over 64 dims).
    for phase in ("grpo_train", "sft_train"):
        assert 0.8 <= result["phases"][phase]["cpu_step_ratio"] <= 1.25, result["phases"][phase]
    assert result["engine"]["tokens"] > 0 and result["ray_imported"] is False
