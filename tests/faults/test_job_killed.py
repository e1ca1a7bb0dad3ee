"""The whole job (`python jobs/full.py`) is SIGKILLed during GRPO and run again: the finished stages
are skipped, GRPO resumes from its last checkpoint at that global step, the data order continues where
it stopped, and MLflow holds the GRPO curves. Dynamic sampling is on: the tiny random model never
answers correctly, so every group is flat and each step re-samples every group once, and says so."""

from __future__ import annotations

import json
import sys

import pytest

from ..training.interrupt import kill_when, registered_checkpoints, rerun
from ..training.test_grpo import config, steps
from .test_grpo_faults import journal

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def step_prompts(events: list[dict]) -> dict[int, list[str]]:
    """Rank 0's prompts per step, the last time each step ran."""
    return {e["step"]: e["prompt_ids"] for e in events if e["event"] == "step" and e["rank"] == 0}


def test_killed_job_resumes_grpo_at_its_checkpoint_step_and_data_order(tmp_path):
    from mlflow import MlflowClient

    from medmcqa_ray.tracking import tracking_uri

    out = tmp_path / "out"
    overrides = [f"output_dir={out}", "sft.max_steps=2", "grpo.max_steps=6", "grpo.save_steps=2",
                 "grpo.max_completion_length=8", "grpo.dynamic_sampling.enabled=true",
                 "grpo.dynamic_sampling.max_rounds=1", "eval.limit=4", "eval.heads=[grpo]",
                 "tracking.enabled=true"]
    cfg = config(out, *overrides[1:])
    cmd = [sys.executable, "jobs/full.py", "--config", "configs/ci.yaml", *overrides]
    def between_checkpoints() -> bool:  # a checkpoint is registered and the step after it has started
        registered = registered_checkpoints(out, "grpo")
        return bool(registered) and max(step_prompts(journal(out)), default=0) > registered[-1]

    kill_when(cmd, between_checkpoints)
    assert not (out / "checkpoints" / "grpo_manifest.json").exists()  # nothing marked complete
    last_checkpoint = registered_checkpoints(out, "grpo")[-1]
    before = step_prompts(journal(out))

    r = rerun(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("download", "prep", "sft"):
        assert f"== {stage} (skipped: up to date)" in r.stdout + r.stderr, stage
    manifest = json.loads((out / "checkpoints" / "grpo_manifest.json").read_text())
    assert manifest["resumed"] and manifest["resumed_from_step"] == last_checkpoint
    assert f"grpo: resuming the interrupted run from its checkpoint at step {last_checkpoint}\n" in r.stdout
    assert [s["resumed_from_step"] for s in manifest["worker_starts"]] == [0, last_checkpoint]
    # The HF Trainer restored the log of the steps before the checkpoint: one entry per step, 1 to 6.
    done = [h["step"] for h in steps(manifest["history"])]
    assert done == list(range(1, 7))
    # Data order: the steps redone after the checkpoint got the same prompts as before the kill, and
    # over the whole run no prompt came twice (a restarted epoch would repeat steps 1, 2, ...).
    after = step_prompts(journal(out))
    assert sorted(after) == done
    redone = [s for s in before if s > last_checkpoint]
    assert redone and all(after[s] == before[s] for s in redone)
    used = [i for s in done for i in after[s]]
    assert len(used) == 12 and len(set(used)) == 12, after

    assert all(h["rollout/policy_version_lag"] == 0 for h in steps(manifest["history"]))  # actors got the restored adapter
    assert all(h["rollout/logprob_abs_diff"] < 1e-3 for h in steps(manifest["history"]))
    assert [h["dynamic_sampling/resampled_groups"] for h in steps(manifest["history"])] == [2] * 6  # 2 prompts x 1 round
    assert [h["dynamic_sampling/flat_groups_left"] for h in steps(manifest["history"])] == [2] * 6

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    grpo_run = next(r for r in client.search_runs([experiment], order_by=["start_time DESC"])
                    if r.data.tags.get("medmcqa_ray.stage") == "grpo")
    for metric in ("grpo/rewards/correct/mean", "grpo/rewards/format_exact/mean", "grpo/rollout/logprob_abs_diff",
                   "grpo/rollout/policy_version_lag", "grpo/timing/generate", "grpo/timing/reward",
                   "grpo/timing/sync", "grpo/timing/train", "grpo/timing/step", "grpo/entropy",
                   "grpo/completions/mean_length", "grpo/clip_ratio/region_mean"):
        history = client.get_metric_history(grpo_run.info.run_id, metric)
        assert sorted(m.step for m in history) == done, metric
