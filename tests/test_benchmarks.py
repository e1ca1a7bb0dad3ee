"""Every benchmark script runs at its smallest size and prints the JSON it promises, so a refactor that
breaks one fails the suite (`make test-all`; CI runs two of them, below). The figures themselves are not judged here (2 shared cores say nothing);
benchmarks/gpu_check.py has its own test (test_gpu_check.py).

CI runs the smokes of the scripts with code of their own that no other CI test runs: prep (the Ray Data
pipeline against a plain loop) and gpu_smoke (the device script, on a Qwen3 model it builds: it must work
the day a device is lent). The other six are built from parts other CI tests run (GRPO stages sync and
one-step-off, several learners, the hf and vLLM engines, reward actors, eval) and are in the extended tier
(`make test-all`): each costs one or two stage runs or engine starts, 40 s to 2 minutes on 2 cores.
`make lint` type-checks every script, so a renamed attribute or a changed signature still fails CI in
seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CI_SFT, sft_copy

REPO = Path(__file__).resolve().parents[1]
TINY = "embedded:tiny-random-smollm2"

# script, smallest arguments, keys its JSON must hold
SMOKE = {
    "prep": (["--rows", "300"], ["speedup_ray_vs_loop", "rows_kept"]),
    "rewards": (["--completions", "16", "--actors", "1"], ["speedup_pool_vs_in_process", "similarity_scorer"]),
    "rollout": (["--model", TINY, "--prompts", "2", "--n", "2", "--tokens", "8", "--engines", "hf,vllm",
                 "--modes", "base,adapter", "--kv-cache-gb", "0.25", "--lora-rank", "8"], ["benchmark"]),
    "grpo_step": (["--model", TINY, "--steps", "2", "--prompts", "1", "--n", "2", "--tokens", "8", "--engines", "hf,trl",
                   "--kv-cache-gb", "0.25", "--max-model-len", "512"], ["benchmark"]),
    "async_grpo": (["--model", TINY, "--steps", "2", "--prompts", "1", "--n", "2", "--tokens", "8",
                    "--modes", "sync,one_step_off"],
                   ["samples_per_s_ratio"]),
    # One mode: one-step-off GRPO runs in the async_grpo smoke and tests/training/test_one_step_off.py.
    "learning": (["--model", TINY, "--sft-steps", "1", "--grpo-steps", "2", "--prompts", "1", "--n", "2",
                  "--tokens", "8", "--eval-limit", "4", "--modes", "sync"], ["grpo_beats_sft_p_lt_0_05"]),
    "gpu_smoke": (["--device", "cpu", "--steps", "1", "--tiny"], ["grpo_steps", "s_per_step"]),
    # In a copy of the session's prepared ci.yaml output (conftest.ci_sft): its download, prep and SFT are
    # up to date there and skipped, as a user's second benchmark run skips them.
    "scaling": (["--learners", "1", "--steps", "1", *CI_SFT, "grpo.max_completion_length=8"], ["speedup_vs_first", "learners"]),
}


def last_json(stdout: str) -> dict:
    """The JSON object a script prints last (some print progress lines before it)."""
    lines = stdout.splitlines()
    for i in reversed(range(len(lines))):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON object in the output: {stdout[-2000:]}")


EXTENDED = {"async_grpo", "grpo_step", "learning", "rewards", "rollout", "scaling"}


@pytest.mark.slow
@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.extended) if s in EXTENDED else s
                                    for s in sorted(SMOKE)])
def test_benchmark_runs_at_its_smallest_size(script, ray_session, request, tmp_path):
    args, keys = SMOKE[script]
    if script == "scaling":
        args = [*args, f"output_dir={sft_copy(request.getfixturevalue('ci_sft'), tmp_path / 'out')}"]
    # The scripts join the session's Ray (as under `ray job submit`) rather than start one each.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert all(k in result for k in keys), sorted(result)
