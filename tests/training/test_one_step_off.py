"""One-step-off GRPO (grpo.max_off_policy_steps=1) on the tiny model: each step after the first trains on
samples the previous adapter generated while the learner trained (lag 1), TRL's truncated importance
sampling corrects them, and a learner killed mid-run resumes on the same prompts in the same order,
nothing skipped and nothing repeated; settings it cannot honour fail at load."""

from __future__ import annotations

import math
import os
import signal
import threading

import pytest

from medmcqa_ray import metric_names as M
from medmcqa_ray.errors import ConfigError
from medmcqa_ray.pipeline import run_stage
from medmcqa_ray.tracking import Tracker, tracking_uri

from ..conftest import CI_SFT, sft_copy
from ..faults.test_grpo_faults import journal, wait_for
from ..faults.test_job_killed import step_prompts
from .interrupt import registered_checkpoints
from .test_grpo import config, steps, task_count


def test_bad_off_policy_settings_fail_at_load(tmp_path):
    with pytest.raises(ConfigError, match="grpo.max_off_policy_steps: 2 is above what is implemented"):
        config(tmp_path, "grpo.max_off_policy_steps=2")
    with pytest.raises(ConfigError, match="grpo.max_off_policy_steps: 1 generates while the learner trains.*colocate"):
        config(tmp_path, "grpo.max_off_policy_steps=1", "rollout.engine=vllm", "rollout.colocate=true")
    assert config(tmp_path, "grpo.max_off_policy_steps=1").grpo.off_policy_correction == "token_truncate"


@pytest.mark.slow
def test_one_step_off_lags_one_step_and_resumes_in_order(ci_sft, tmp_path):
    out = sft_copy(ci_sft, tmp_path / "out")
    cfg = config(out, *CI_SFT, "grpo.max_off_policy_steps=1", "grpo.max_steps=6", "grpo.save_steps=2",
                 "grpo.max_completion_length=8", "scaling.max_failures=1", "tracking.enabled=true")
    killed: dict = {}

    def registered_and_past_it() -> bool:
        # Registered, not merely written: a checkpoint folder exists before the controller takes the report,
        # and a learner killed in between restarts from nothing. One-step-off journals prompts a step ahead.
        registered = registered_checkpoints(out, "grpo")
        return bool(registered) and max(step_prompts(journal(out)), default=0) >= registered[-1] + 2

    def kill_learner_after_a_checkpoint() -> None:  # the learner dies two steps after a registered checkpoint
        try:
            wait_for(registered_and_past_it, "two steps after a registered checkpoint")
            killed["checkpoint"] = registered_checkpoints(out, "grpo")[-1]
            killed["before"] = step_prompts(journal(out))
            killed["pid"] = next(e["pid"] for e in journal(out) if e["event"] == "start" and e["rank"] == 0)
            os.kill(killed["pid"], signal.SIGKILL)
        except BaseException as e:  # surfaced below
            killed["error"] = e

    killer = threading.Thread(target=kill_learner_after_a_checkpoint, daemon=True)
    killer.start()
    tracker = Tracker(cfg)
    with tracker.pipeline_run("grpo"):
        m = run_stage("grpo", cfg, tracker=tracker)
    killer.join(timeout=60)
    assert "error" not in killed and "pid" in killed, killed
    resumed = killed["checkpoint"]  # 2 or 4 (save_steps=2, and the kill comes before step 6)
    assert resumed in (2, 4) and [s.resumed_from_step for s in m.worker_starts] == [0, resumed]

    # Steps up to the checkpoint from the first learner, the rest from its successor. A learner's first step
    # has nothing generated ahead (lag 0); every other step trained on samples of the adapter one step older.
    history = steps(m.history)
    assert [h["step"] for h in history] == list(range(1, 7))
    assert [h[M.POLICY_VERSION_LAG] for h in history] == [0] + [1] * (resumed - 1) + [0] + [1] * (5 - resumed)
    for h in history:
        if h[M.POLICY_VERSION_LAG]:  # TRL's correction ran: ratios of learner to rollout policy, capped at 2
            assert 0 < h[M.IS_RATIO_MIN] <= h[M.IS_RATIO_MEAN] <= h[M.IS_RATIO_MAX] <= cfg.grpo.off_policy_clip
            assert 0 <= h[M.IS_RATIO_CLIPPED] <= 1
        assert 0 <= h[M.TIMING_LEARNER_WAIT] and not math.isnan(h[M.LOSS])
    # One generate call per step, sent ahead or not: nothing generated twice, nothing lost (the second
    # learner's actors made the steps after the checkpoint; what the first learner sent ahead died unused).
    second = [a.actor_id for a in m.rollout_actors]
    assert task_count("RolloutActor.generate", second, 6 - resumed) == 6 - resumed

    # The data order: the steps redone after the restore got the prompts they had before the kill, and no
    # prompt came twice over the run.
    after = step_prompts(journal(out))
    assert sorted(after) == list(range(1, 7))
    assert all(after[s] == killed["before"][s] for s in killed["before"])
    used = [i for s in sorted(after) for i in after[s]]
    assert len(used) == 12 and len(set(used)) == 12, after

    # MLflow has every step's lag, importance ratios and wait (the steps TRL's correction ran at, for the ratios).
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    run = next(r for r in client.search_runs([experiment]) if r.data.tags.get("medmcqa_ray.stage") == "grpo")
    # (sorted by time: the steps the killed learner logged past its checkpoint were logged again after it)
    logged = {name: {x.step: x.value for x in sorted(client.get_metric_history(run.info.run_id, f"grpo/{name}"),
                                                       key=lambda x: x.timestamp)}
              for name in (M.POLICY_VERSION_LAG, M.TIMING_LEARNER_WAIT, M.IS_RATIO_MEAN, M.IS_RATIO_MIN,
                           M.IS_RATIO_MAX, M.IS_RATIO_CLIPPED)}
    assert logged[M.POLICY_VERSION_LAG] == {h["step"]: h[M.POLICY_VERSION_LAG] for h in history}
    assert set(logged[M.TIMING_LEARNER_WAIT]) == set(range(1, 7))
    lagged = {h["step"] for h in history if h[M.POLICY_VERSION_LAG]}
    assert all(lagged <= set(logged[name]) for name in (M.IS_RATIO_MEAN, M.IS_RATIO_MIN, M.IS_RATIO_MAX,
                                                         M.IS_RATIO_CLIPPED))
