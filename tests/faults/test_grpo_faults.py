"""Faults injected into one real GRPO run (tiny model, CPU): a rollout actor's process is killed while
it generates, a reward actor's process is killed while it scores a batch, and the learner worker's
process is killed after a checkpoint. The run finishes its planned steps with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from medmcqa_ray.pipeline import run_stage
from medmcqa_ray.training.journal import read_journal
from medmcqa_ray.training.learner import TRL_REFERENCE_ADAPTER

from ..conftest import CI_SFT, sft_copy, state_api
from ..training.interrupt import registered_checkpoints
from ..training.test_grpo import config, steps
from .slow_reward import ARMED, SCORING, SIGNALS

pytestmark = pytest.mark.slow


def journal(out: Path) -> list[dict]:
    return read_journal(out / "checkpoints" / "grpo")


def rank0_steps(out: Path) -> list[int]:
    return [e["step"] for e in journal(out) if e["event"] == "step" and e["rank"] == 0]


def wait_for(condition, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def alive_pid(class_name: str) -> int:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")], **state_api())
    assert len(actors) == 1, actors
    return actors[0].pid


class Faults(threading.Thread):
    """Injects the three faults in order as the run reaches them; records what it did."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.done, self.error = out, {}, None

    def run(self) -> None:
        try:
            # 1. The rollout actor dies as step 1's generation starts.
            wait_for(lambda: 1 in rank0_steps(self.out), "step 1's rollout")
            self.done["rollout_pid"] = alive_pid("RolloutActor")
            os.kill(self.done["rollout_pid"], signal.SIGKILL)
            # 2. The reward actor dies in the middle of scoring a batch.
            ARMED.touch()
            wait_for(SCORING.exists, "a batch being scored")
            self.done["reward_pid"] = int(SCORING.read_text())
            self.done["reward_step"] = max(rank0_steps(self.out))
            ARMED.unlink()  # the retried batch scores at once
            os.kill(self.done["reward_pid"], signal.SIGKILL)
            # 3. The learner worker dies two steps after a checkpoint Ray Train has registered (not merely
            #    written: a learner killed before the controller takes the report restarts from nothing).
            def past_a_registered_checkpoint() -> bool:
                registered = registered_checkpoints(self.out, "grpo")
                return bool(registered) and max(rank0_steps(self.out)) >= registered[-1] + 2

            wait_for(past_a_registered_checkpoint, "two steps after a registered checkpoint")
            self.done["checkpoint"] = registered_checkpoints(self.out, "grpo")[-1]
            self.done["learner_pid"] = next(e["pid"] for e in journal(self.out) if e["event"] == "start" and e["rank"] == 0)
            os.kill(self.done["learner_pid"], signal.SIGKILL)
        except BaseException as e:  # surfaced by the test
            self.error = e


def test_killed_actors_and_learner_mid_grpo_lose_nothing(ci_sft, tmp_path):
    from mlflow import MlflowClient
    from ray.util.state import list_tasks

    from medmcqa_ray.tracking import Tracker, tracking_uri

    SIGNALS.mkdir(exist_ok=True)
    for f in (ARMED, SCORING):
        f.unlink(missing_ok=True)
    out = sft_copy(ci_sft, tmp_path / "out")
    # With a KL term (grpo.beta), whose reference has to survive the learner's restart too. At ci.yaml's
    # learning rate a step moves the tiny model's logprobs by about 5e-4, and the KL (about their square / 2)
    # is then within float32's rounding of 0; at SFT's rate it is well clear of it.
    cfg = config(out, *CI_SFT, "grpo.max_steps=6", "grpo.save_steps=2", "grpo.max_completion_length=8",
                 "rewards.custom.slow.path=tests.faults.slow_reward:score", "rewards.custom.slow.weight=0.0",
                 "scaling.max_failures=1", "tracking.enabled=true", "grpo.beta=0.1", "grpo.learning_rate=0.003")
    faults = Faults(out)
    faults.start()
    tracker = Tracker(cfg)
    with tracker.pipeline_run("grpo"):
        m = run_stage("grpo", cfg, tracker=tracker)
    faults.join(timeout=60)
    assert faults.error is None, faults.error
    assert set(faults.done) == {"rollout_pid", "reward_pid", "reward_step", "checkpoint", "learner_pid"}

    # The planned steps, each once, every rollout from the current adapter, learner and actors in sync.
    history = steps(m.history)
    assert [h["step"] for h in history] == list(range(1, 7))
    assert all(h["rollout/policy_version_lag"] == 0 for h in history)
    assert all(h["rollout/logprob_abs_diff"] < 1e-3 for h in history)
    # 1. The pool noticed the restarted rollout actor and gave it the current adapter before it
    #    generated again (lag 0 above). Steps 1-2 are kept in the step-2 checkpoint the learner later
    #    restarted from; the learner's restart brought fresh actors, which count as new, not restarted.
    assert sum(h["rollout/actor_restarts"] for h in history[:2]) == 1, [h["rollout/actor_restarts"] for h in history]
    # 2. The batch whose reward actor died was scored again on the restarted actor (Ray retried the
    #    task): no reward is missing and no scoring error was counted.
    retried = list_tasks(filters=[("func_or_class_name", "=", "RewardActor.score")], detail=True, limit=10_000,
                         **state_api())
    assert any(t.attempt_number >= 1 and t.state == "FINISHED" for t in retried)
    assert not any(k.startswith("rewards/") and k.endswith("/errors") and v for h in history for k, v in h.items())
    assert all(h["rewards/correct/mean"] == h["rewards/correct/mean"] for h in history)  # no NaN
    # 3. Ray Train restarted the learner from its checkpoint (step 2, or 4 if the kill came that late); the
    #    manifest and MLflow say so.
    resumed = faults.done["checkpoint"]
    assert resumed in (2, 4) and m.worker_restarts == 1 and [s.resumed_from_step for s in m.worker_starts] == [0, resumed]
    assert m.worker_starts[0].pid == faults.done["learner_pid"] != m.worker_starts[1].pid
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    run = next(r for r in client.search_runs([experiment]) if r.data.tags.get("medmcqa_ray.stage") == "grpo")
    assert run.data.metrics["grpo/worker_restarts"] == 1
    assert run.data.params["rewards.similarity_scorer"] == m.similarity_scorer == "embedding"  # not the fallback
    # Each step was logged live. The killed learner had logged steps past its checkpoint, which its
    # successor trained again: the run keeps both attempts, the later one last; steps 1-2 are not repeated.
    curve = sorted(client.get_metric_history(run.info.run_id, "grpo/rewards/correct/mean"), key=lambda x: x.timestamp)
    assert {x.step for x in curve} == set(range(1, 7)) and [x.step for x in curve][:2] == [1, 2]
    assert sum(x.step <= 2 for x in curve) == 2
    assert {x.step: x.value for x in curve} == {h["step"]: pytest.approx(h["rewards/correct/mean"]) for h in history}
    # The KL reference is the SFT adapter GRPO started from, not the base model: the first step's policy is
    # that adapter, so its KL is exactly 0. Every later step's is above 0, the first after the restart
    # included: the restarted learner's policy is the checkpoint it resumed, its reference the SFT adapter.
    assert history[0]["kl"] == 0 and all(h["kl"] > 1e-6 for h in history[1:]), [h["kl"] for h in history]
    # The adapter is complete: the final one is the step-6 policy, and only it (not TRL's frozen reference).
    info = json.loads((out / "checkpoints" / "grpo" / "training_info.json").read_text())
    assert info["log_history"][-1]["step"] == 6
    assert sorted(p.name for p in (out / "checkpoints" / "grpo").glob("*adapter*")) == [
        "adapter_config.json", "adapter_model.safetensors"] and not (out / "checkpoints" / "grpo" / TRL_REFERENCE_ADAPTER).exists()


def test_a_reward_that_keeps_failing_stops_grpo_naming_it(ci_sft, tmp_path):
    """A custom component raising on every sample used to become None, be counted, and leave training to
    the other components for the whole run; now the first step stops the stage, naming it and its error."""
    from medmcqa_ray.errors import StageError, user_error

    out = sft_copy(ci_sft, tmp_path / "out")
    cfg = config(out, *CI_SFT, "scaling.max_failures=0",
                 "rewards.custom.explodes.path=tests.rewards.custom_reward:explodes")
    with pytest.raises(Exception) as e:
        run_stage("grpo", cfg)
    found = user_error(e.value)
    assert isinstance(found, StageError), e.value
    assert "reward 'explodes' raised on 8 of 8 samples of a step, above rewards.max_error_rate=0.05" in str(found)
    assert "RuntimeError: boom" in str(found)
    assert not (out / "checkpoints" / "grpo" / "adapter_model.safetensors").exists()
