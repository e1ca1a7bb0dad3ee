"""GRPO on Ray Train with rollout and reward actors: it learns a toy rule, every sample comes from the
rollout actors and every score from the reward actors, the rollout and learner policies agree after
every update, and bad input fails before work starts. (Killed runs and faults: tests/faults/.)"""

import time
from pathlib import Path

import pytest

from medmcqa_ray.errors import StageError
from medmcqa_ray.pipeline import run_stage

from ..conftest import REPO, state_api


def config(out: Path, *overrides: str):
    from medmcqa_ray.config import load_config

    return load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *overrides])


def steps(history: list[dict]) -> list[dict]:
    """A GRPO log history's training steps (not the end-of-training summary)."""
    return [h for h in history if "rewards/correct/mean" in h]


def task_count(name: str, actor_ids: list[str], expected: int, timeout_s: float = 60) -> int:
    """Finished calls of a method on these actors, from Ray's state API (task events arrive late)."""
    from ray.util.state import list_tasks

    deadline = time.monotonic() + timeout_s
    while True:
        tasks = list_tasks(filters=[("func_or_class_name", "=", name)], limit=10_000, **state_api())
        count = sum(t.state == "FINISHED" and t.actor_id in actor_ids for t in tasks)
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(1)


@pytest.mark.slow
def test_grpo_learns_a_toy_rule_in_actors(toy_sft):
    """SmolLM2-135M-Instruct, SFT on the toy train split, then GRPO on the always-C split."""
    out, overrides = toy_sft
    cfg = config(out, *overrides, "grpo.max_steps=8", "grpo.save_steps=4")
    m = run_stage("grpo", cfg)
    history = steps(m.history)
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
    rollout_ids = [a.actor_id for a in m.rollout_actors]
    reward_ids = [a.actor_id for a in m.reward_actors]
    assert task_count("RolloutActor.generate", rollout_ids, 8) == 8
    assert task_count("RewardActor.score", reward_ids, 8) == 8
    assert sum(a.completions for a in m.rollout_actors) == completions
    assert sum(a.scored for a in m.reward_actors) == completions

    # The GRPO adapter continued the SFT one (same shape) and is a plain PEFT folder.
    from peft import PeftConfig

    grpo, sft = (PeftConfig.from_pretrained(Path(cfg.output_dir) / "checkpoints" / h) for h in ("grpo", "sft"))
    assert (grpo.r, sorted(grpo.target_modules)) == (sft.r, sorted(sft.target_modules))


def test_grpo_fails_before_work_without_an_sft_adapter(tmp_path):
    from medmcqa_ray.training.grpo import check_config

    cfg = config(tmp_path / "out", f"adapters.sft={tmp_path / 'nowhere'}")
    with pytest.raises(StageError, match="nowhere"):
        check_config(cfg)


def test_grpo_fails_before_work_when_learners_and_actors_cannot_fit(ray_session, tmp_path):
    """Ray would wait forever for resources that never come; the stage says what does not fit."""
    from medmcqa_ray.training.capacity import check_resources

    cfg = config(tmp_path / "out", "scaling.num_workers=4")  # 4 x (1 + 1 + 1) CPUs on a 6-CPU session
    with pytest.raises(StageError, match=r"CPU: needs 12, the cluster has 6 \(scaling.num_workers"):
        check_resources(cfg)
    check_resources(config(tmp_path / "out", "scaling.num_workers=2"))  # 6 fit


def test_shuffled_options_move_the_gold_letter_with_its_option(ci_sft):
    """grpo.shuffle_options: the prompt shows the options in a new order, the gold letter is the one now
    beside the gold option, about three in four questions change letter, and a re-run (a resume, another
    learner) gets the same orders; another seed gets others."""
    from medmcqa_ray.formatting import LETTERS
    from medmcqa_ray.training.grpo import training_prompts

    plain = training_prompts(config(ci_sft))
    shuffled = training_prompts(config(ci_sft, "grpo.shuffle_options=true"))
    assert [r["id"] for r in shuffled] == [r["id"] for r in plain]
    for before, after in zip(plain, shuffled):
        gold = before["options"][LETTERS.index(before["answer_label"])]
        assert sorted(after["options"]) == sorted(before["options"])
        assert after["options"][LETTERS.index(after["answer_label"])] == gold
        assert f"{after['answer_label']}. {gold}\n" in after["prompt"][1]["content"]
    moved = sum(a["answer_label"] != b["answer_label"] for a, b in zip(plain, shuffled)) / len(plain)
    assert 0.5 < moved < 0.95, moved
    assert training_prompts(config(ci_sft, "grpo.shuffle_options=true")) == shuffled
    assert training_prompts(config(ci_sft, "grpo.shuffle_options=true", "grpo.seed=1")) != shuffled
