"""GRPO on Ray Train with rollout and reward actors: it learns a toy rule, every sample comes from the
rollout actors and every score from the reward actors, the rollout and learner policies agree after
every update, a killed run resumes from its checkpoint with its curves in MLflow, dynamic sampling
fires where groups are flat, and bad input fails before work starts."""

import json
import random
import time
from pathlib import Path

import pytest

from medmcqa_ray.errors import StageError
from medmcqa_ray.pipeline import run_stage

from ..conftest import REPO
from .interrupt import kill_after_first_checkpoint_and_rerun

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grove", "harbor", "island", "jade", "kettle"]


def toy_data(folder: Path) -> Path:
    """The learnable rule: train rows (SFT) have answers spread over A-D; every validation row's answer
    is C. GRPO trains on validation, so the policy must learn to prefer C, which SFT did not teach."""
    rng = random.Random(0)
    folder.mkdir(parents=True)

    def row(split: str, i: int, cop: int) -> str:
        opts = rng.sample(WORDS, 4)
        return json.dumps({"id": f"{split}-{i}", "question": f"Toy question {i}: which option?", "opa": opts[0],
                           "opb": opts[1], "opc": opts[2], "opd": opts[3], "cop": cop, "choice_type": "single",
                           "exp": None, "subject_name": "Toy", "topic_name": "toy"}) + "\n"

    (folder / "train.jsonl").write_text("".join(row("train", i, rng.randrange(4)) for i in range(160)))
    (folder / "validation.jsonl").write_text("".join(row("validation", i, 2) for i in range(64)))
    return folder


def config(out: Path, *overrides: str):
    from medmcqa_ray.config import load_config

    return load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *overrides])


def steps(manifest: dict) -> list[dict]:
    return [h for h in manifest["history"] if "rewards/correct/mean" in h]


def task_count(name: str, actor_ids: list[str], expected: int, timeout_s: float = 60) -> int:
    """Finished calls of a method on these actors, from Ray's state API (task events arrive late)."""
    from ray.util.state import list_tasks

    deadline = time.monotonic() + timeout_s
    while True:
        tasks = list_tasks(filters=[("func_or_class_name", "=", name)], limit=10_000, raise_on_missing_output=False)
        count = sum(t.state == "FINISHED" and t.actor_id in actor_ids for t in tasks)
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(1)


@pytest.mark.slow
def test_grpo_learns_a_toy_rule_in_actors(ray_session, tmp_path):
    """SmolLM2-135M-Instruct, SFT on the toy train split, then GRPO on the always-C split."""
    data = toy_data(tmp_path / "toy")
    cfg = config(tmp_path / "out", "model.name=embedded:smollm2-135m-instruct", "data.source=local",
                 f"data.path={data}", "data.layout=hf", "scaling.resources_per_worker={CPU: 2}",
                 "rollout.num_cpus_per_actor=2", "sft.max_steps=16", "sft.learning_rate=0.0005",
                 "sft.lora.r=16", "sft.lora.alpha=32", "grpo.split=validation", "grpo.max_steps=8",
                 "grpo.prompts_per_step=2", "grpo.num_generations=4", "grpo.max_completion_length=32",
                 "grpo.learning_rate=0.0002", "grpo.save_steps=4")
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    m = run_stage("grpo", cfg)
    history = steps(m)
    assert len(history) == 8
    correct = [h["rewards/correct/mean"] for h in history]
    first, last = sum(correct[:2]) / 2, sum(correct[-3:]) / 3
    assert last >= first + 0.25 and last >= 0.75, correct  # it learned to answer C

    # Synchronous and in sync: every rollout used the adapter of the current step, and the rollout
    # actors' logprobs equal the learner's on the sampled tokens, across 8 updates.
    assert all(h["rollout/policy_version_lag"] == 0 for h in history)
    assert all(h["rollout/logprob_abs_diff"] < 1e-3 for h in history), [h["rollout/logprob_abs_diff"] for h in history]
    # (TRL logs kl only when beta > 0; beta is 0 here, so no reference model is loaded.)
    for key in ("timing/generate", "timing/reward", "timing/sync", "timing/train", "entropy",
                "completions/mean_length", "clip_ratio/region_mean", "rewards/similarity/mean"):
        assert all(key in h for h in history), key

    # All generation in rollout actors, all scoring in reward actors: Ray's state API counts one
    # generate call and one score call per step, and the actors counted every completion.
    completions = 8 * 2 * 4
    rollout_ids = [a["actor_id"] for a in m["rollout_actors"]]
    reward_ids = [a["actor_id"] for a in m["reward_actors"]]
    assert task_count("RolloutActor.generate", rollout_ids, 8) == 8
    assert task_count("RewardActor.score", reward_ids, 8) == 8
    assert sum(a["completions"] for a in m["rollout_actors"]) == completions
    assert sum(a["scored"] for a in m["reward_actors"]) == completions

    # The GRPO adapter continued the SFT one (same shape) and is a plain PEFT folder.
    from peft import PeftConfig

    grpo, sft = (PeftConfig.from_pretrained(Path(cfg.output_dir) / "checkpoints" / h) for h in ("grpo", "sft"))
    assert (grpo.r, sorted(grpo.target_modules)) == (sft.r, sorted(sft.target_modules))


@pytest.mark.slow
def test_killed_grpo_resumes_from_its_checkpoint_and_reports_to_mlflow(ray_session, tmp_path):
    """The whole `medmcqa-ray grpo` process group is SIGKILLed after its first checkpoint; the re-run
    continues from that step, ends at the planned step, and MLflow holds the GRPO curves. Dynamic
    sampling is on: the tiny random model never answers correctly, so every group is flat and each
    step re-samples every group once, and says so."""
    from mlflow import MlflowClient

    from medmcqa_ray.tracking import tracking_uri

    out = tmp_path / "out"
    overrides = ["sft.max_steps=2", "grpo.max_steps=6", "grpo.save_steps=2", "grpo.max_completion_length=8",
                 "grpo.dynamic_sampling.enabled=true", "grpo.dynamic_sampling.max_rounds=1", "tracking.enabled=true"]
    cfg = config(out, *overrides)
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    r = kill_after_first_checkpoint_and_rerun("grpo", out, overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "checkpoints" / "grpo_manifest.json").read_text())
    done = [h["step"] for h in steps(manifest)]
    assert manifest["resumed"] and manifest["resumed_from_step"] in (2, 4), manifest["resumed_from_step"]
    # The HF Trainer restored the log of the steps before the checkpoint: one entry per step, 1 to 6.
    assert done == list(range(1, 7))
    assert all(h["rollout/policy_version_lag"] == 0 for h in steps(manifest))  # actors got the restored adapter
    assert all(h["rollout/logprob_abs_diff"] < 1e-3 for h in steps(manifest))
    assert [h["dynamic_sampling/resampled_groups"] for h in steps(manifest)] == [2] * 6  # 2 prompts x 1 round
    assert [h["dynamic_sampling/flat_groups_left"] for h in steps(manifest)] == [2] * 6

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


def test_grpo_fails_before_work_without_an_sft_adapter(tmp_path):
    from medmcqa_ray.training.grpo import check_config

    cfg = config(tmp_path / "out", f"grpo.adapter={tmp_path / 'nowhere'}")
    with pytest.raises(StageError, match="nowhere"):
        check_config(cfg)
