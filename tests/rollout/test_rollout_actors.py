"""Rollout engines and actors on the tiny random model: sampling contract, adapter sync, restarts."""

import pytest
import torch

from medmcqa_ray.adapters import adapter_from_model
from medmcqa_ray.config import ModelSection, RolloutSection
from medmcqa_ray.models import load_model, load_tokenizer
from medmcqa_ray.rollout.types import AdapterUpdate, Sampling

TINY = ModelSection(name="embedded:tiny-random-smollm2")
PROMPT = "<|im_start|>user\nWhich vitamin prevents scurvy?<|im_end|>\n<|im_start|>assistant\n<start_working_out>"


def ids(text: str) -> list[int]:
    from medmcqa_ray.formatting import prompt_token_ids

    return prompt_token_ids(text, load_tokenizer(TINY))


def changed_lora(seed: int):
    """A LoRA on the tiny model with non-zero B matrices, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(TINY, "cpu"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, *adapter_from_model(model)


def reference_logprobs(model, token_ids: list[int]) -> list[float]:
    prompt_ids = ids(PROMPT)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + token_ids])).logits[0, len(prompt_ids) - 1:-1].float().log_softmax(-1)
    return logits.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1).tolist()


def test_hf_engine_sampling_contract():
    from medmcqa_ray.rollout.hf_engine import HFEngine

    engine = HFEngine(TINY, device="cpu")
    out = engine.generate([ids(PROMPT), ids("short")], Sampling(n=3, max_new_tokens=6, seed=7, top_k=20, top_p=0.9))
    assert [len(g) for g in out] == [3, 3]
    for p, group in enumerate(out):
        for s, c in enumerate(group):
            assert (c.prompt_index, c.sample_index, c.policy_version) == (p, s, -1)
            assert len(c.token_ids) == len(c.logprobs) <= 6 and all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
    again = engine.generate([ids(PROMPT), ids("short")], Sampling(n=3, max_new_tokens=6, seed=7, top_k=20, top_p=0.9))
    assert [c.token_ids for g in again for c in g] == [c.token_ids for g in out for c in g]  # seeded
    greedy = engine.generate([ids(PROMPT)], Sampling(temperature=0, max_new_tokens=6))[0][0]
    # Logprobs are the model's own (raw logits), whatever the sampling settings: check against a forward pass.
    assert greedy.logprobs == pytest.approx(reference_logprobs(engine.model, greedy.token_ids), abs=1e-4)


@pytest.mark.slow
def test_actor_adapter_sync_and_restart(ray_session):
    import ray

    from medmcqa_ray.rollout.actor import RolloutPool

    pool = RolloutPool(TINY, RolloutSection(engine="hf", num_actors=2, num_cpus_per_actor=0.5, max_restarts=2))
    try:
        base = pool.generate([ids(PROMPT)], Sampling(temperature=0, max_new_tokens=8))[0][0]
        model, peft_config, weights = changed_lora(seed=1)
        pool.load_adapter(AdapterUpdate(version=1, peft_config=peft_config), weights)
        prompts = [ids(PROMPT), ids(PROMPT)]  # one chunk per actor
        out = pool.generate(prompts, Sampling(temperature=0, max_new_tokens=8))
        for group in out:
            c = group[0]
            assert c.policy_version == 1
            # The actor's logprobs equal those of the same adapter computed here, and differ from the base model's.
            assert c.logprobs == pytest.approx(reference_logprobs(model, c.token_ids), abs=1e-4)
        assert out[0][0].logprobs != pytest.approx(reference_logprobs(load_model(TINY, "cpu"), out[0][0].token_ids), abs=1e-3)
        assert out[0][0].token_ids != base.token_ids or out[0][0].logprobs != pytest.approx(base.logprobs, abs=1e-3)

        # Kill one actor (Ray restarts it, without the adapter): the pool re-sends version 1 and
        # the answer still comes from version 1, identical to before.
        ray.kill(pool.actors[1], no_restart=False)
        again = pool.generate(prompts, Sampling(temperature=0, max_new_tokens=8))
        assert [g[0].policy_version for g in again] == [1, 1]
        assert again[1][0].token_ids == out[1][0].token_ids
        assert pool.restarts == 1  # it noticed the new process
        assert {h.policy_version for h in pool.health()} == {1}
    finally:
        pool.shutdown()


def test_shared_prefill_changes_nothing_but_speed():
    """n samples continue from one prefill of their prompt: same tokens and logprobs as n=1 (greedy),
    with prompts of different lengths (left padding) in the batch."""
    from medmcqa_ray.rollout.hf_engine import HFEngine

    engine = HFEngine(TINY, device="cpu")
    batch = [ids(PROMPT), ids("a much shorter prompt"), ids(PROMPT + " and more words at the end")]
    shared = engine.generate(batch, Sampling(n=3, temperature=0, max_new_tokens=10))
    single = engine.generate(batch, Sampling(n=1, temperature=0, max_new_tokens=10))
    for group, (alone,) in zip(shared, single):
        assert len(group) == 3
        for c in group:
            assert c.token_ids == alone.token_ids
            assert c.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
