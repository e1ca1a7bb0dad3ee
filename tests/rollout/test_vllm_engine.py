"""VLLMEngine against tests/fakes/vllm, a fake of the parts of vLLM 0.33 it calls (vLLM needs a GPU).

The fake is importable as `vllm` only inside the `fake_vllm` fixture, which restores sys.modules and
sys.path afterwards, so no other test (or a real vLLM on a GPU machine) sees it.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

from medmcqa_ray.config import ModelConfig, RolloutConfig
from medmcqa_ray.rollout.types import AdapterUpdate, Sampling

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PEFT_CONFIG = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": {"q_proj", "v_proj"},
               "base_model_name_or_path": "some/hub-model"}

# What vLLM 0.33.0's source says (cited in tests/fakes/vllm/__init__.py); the fake must keep these names.
LLM_INIT_PARAMS = {"model", "trust_remote_code", "tensor_parallel_size", "dtype", "revision", "seed",
                   "gpu_memory_utilization", "hf_token"}
ENGINE_ARGS_USED = {"enable_lora", "max_lora_rank", "max_model_len", "logprobs_mode", "distributed_executor_backend"}
GENERATE_PARAMS = ["self", "prompts", "sampling_params", "use_tqdm", "lora_request", "priority",
                   "tokenization_kwargs", "mm_processor_kwargs"]
SAMPLING_FIELDS = {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None,
                   "max_tokens": 16, "logprobs": None}
LORA_REQUEST_FIELDS = ["lora_name", "lora_int_id", "lora_path", "base_model_name", "load_inplace"]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    saved = {name: mod for name, mod in sys.modules.items() if name == "vllm" or name.startswith("vllm.")}
    for name in saved:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKES))
    import vllm

    assert Path(vllm.__file__).is_relative_to(FAKES)
    yield vllm
    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        del sys.modules[name]  # monkeypatch then puts back whatever was there before


@pytest.fixture
def engine(fake_vllm: ModuleType):
    from medmcqa_ray.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(ModelConfig(name="some/hub-model", revision="abc123", dtype="auto"),
                      RolloutConfig(engine="vllm", gpu_memory_utilization=0.3, max_model_len=1024,
                                    max_lora_rank=24, tensor_parallel_size=1))


def adapter_weights(scale: float) -> dict[str, torch.Tensor]:
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {f"{prefix}.lora_A.weight": torch.full((8, 16), scale), f"{prefix}.lora_B.weight": torch.zeros(16, 8)}


def test_module_imports_without_vllm() -> None:
    import medmcqa_ray.rollout.vllm_engine  # noqa: F401

    assert "vllm" not in sys.modules or not Path(sys.modules["vllm"].__file__ or "").is_relative_to(FAKES)


def test_builds_llm_with_lora_and_config_values(engine) -> None:
    kwargs = engine.llm.init_kwargs
    assert kwargs["model"] == "some/hub-model" and kwargs["revision"] == "abc123"
    assert kwargs["enable_lora"] is True
    assert kwargs["max_lora_rank"] == 32  # 24 rounded up to a rank vLLM accepts
    assert (kwargs["gpu_memory_utilization"], kwargs["max_model_len"], kwargs["tensor_parallel_size"]) == (0.3, 1024, 1)
    assert kwargs["dtype"] == "bfloat16" and kwargs["trust_remote_code"] is False
    assert kwargs["logprobs_mode"] == "raw_logprobs"
    assert set(kwargs) <= LLM_INIT_PARAMS | ENGINE_ARGS_USED
    assert engine.health() == {"engine": "VLLMEngine", "policy_version": -1, "lora_id": None}


def test_generate_converts_outputs(engine) -> None:
    from vllm.entrypoints.llm import fake_logprob, fake_sample, fake_text

    sampling = Sampling(n=3, temperature=0.7, top_p=0.9, top_k=0, min_p=0.05, max_new_tokens=4, seed=7)
    result = engine.generate(["p0", "p1"], sampling)
    call = engine.llm.generate_calls[-1]
    params = call["sampling_params"]
    assert call["prompts"] == ["p0", "p1"] and call["lora_request"] is None and call["use_tqdm"] is False
    assert (params.n, params.temperature, params.top_p, params.top_k, params.min_p, params.max_tokens, params.seed,
            params.logprobs) == (3, 0.7, 0.9, 0, 0.05, 4, 7, 0)
    assert [len(r) for r in result] == [3, 3]
    for i, completions in enumerate(result):
        for j, c in enumerate(completions):
            ids, reason = fake_sample(i, j, 0, 4)
            assert (c.prompt_index, c.sample_index, c.policy_version) == (i, j, -1)
            assert c.token_ids == ids and c.text == fake_text(ids) and c.finish_reason == reason
            assert c.logprobs == [fake_logprob(t) for t in ids]
    assert {c.finish_reason for r in result for c in r} == {"stop", "length"}


def test_conversion_picks_the_sampled_token_among_top_logprobs(fake_vllm: ModuleType) -> None:
    from vllm import LLM, SamplingParams
    from vllm.entrypoints.llm import fake_logprob

    from medmcqa_ray.rollout.vllm_engine import to_completions

    [out] = LLM("m").generate(["p"], SamplingParams(n=2, logprobs=3, max_tokens=8))
    out.outputs.reverse()  # the order vLLM lists samples in must not matter: index does
    completions = to_completions(0, out, policy_version=5)
    assert [c.sample_index for c in completions] == [0, 1]
    assert all(c.logprobs == [fake_logprob(t) for t in c.token_ids] for c in completions)


def test_greedy_with_several_samples_asks_vllm_for_one(engine) -> None:
    result = engine.generate(["p"], Sampling(n=3, temperature=0.0, max_new_tokens=5))
    assert engine.llm.generate_calls[-1]["sampling_params"].n == 1  # vLLM rejects greedy n > 1
    assert [c.sample_index for c in result[0]] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in result[0]}) == 1


def test_load_adapter_writes_peft_folder_and_swaps_requests(engine) -> None:
    engine.load_adapter(AdapterUpdate(version=0, peft_config=PEFT_CONFIG), adapter_weights(1.0))
    first = engine.lora_request
    folder = Path(first.lora_path)
    assert (first.lora_name, first.lora_int_id) == ("policy-v0", 1)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["target_modules"] == ["q_proj", "v_proj"]
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert saved.keys() == adapter_weights(1.0).keys()
    assert all(torch.equal(saved[k], v) for k, v in adapter_weights(1.0).items())
    assert engine.llm.llm_engine.list_loras() == {1}
    assert engine.policy_version == 0 and engine.health()["lora_id"] == 1

    engine.load_adapter(AdapterUpdate(version=1, peft_config=PEFT_CONFIG), adapter_weights(2.0))
    second = engine.lora_request
    assert (second.lora_name, second.lora_int_id) == ("policy-v1", 2)
    assert engine.llm.llm_engine.removed == [1] and engine.llm.llm_engine.list_loras() == {2}
    assert not folder.exists() and Path(second.lora_path).is_dir()
    assert torch.equal(engine.llm.llm_engine.loaded_tensors[2][next(iter(adapter_weights(2.0)))], torch.full((8, 16), 2.0))

    # Re-sending a version (after an actor restart) still gets a fresh id: ids are never reused.
    engine.load_adapter(AdapterUpdate(version=1, peft_config=PEFT_CONFIG), adapter_weights(2.0))
    assert engine.lora_request.lora_int_id == 3 and engine.llm.llm_engine.removed == [1, 2]


def test_generation_after_load_uses_new_adapter_and_version(engine) -> None:
    from vllm.entrypoints.llm import fake_sample

    engine.load_adapter(AdapterUpdate(version=4, peft_config=PEFT_CONFIG), adapter_weights(1.0))
    [[c]] = engine.generate(["p"], Sampling(max_new_tokens=6))
    assert engine.llm.generate_calls[-1]["lora_request"] is engine.lora_request
    assert c.policy_version == 4 and c.token_ids == fake_sample(0, 0, 1, 6)[0]


def test_failed_adapter_load_keeps_the_current_one(engine) -> None:
    engine.load_adapter(AdapterUpdate(version=0, peft_config=PEFT_CONFIG), adapter_weights(1.0))
    current = engine.lora_request
    too_big = {**PEFT_CONFIG, "r": 64}  # above the engine's max_lora_rank (32): vLLM refuses it
    with pytest.raises(ValueError, match="max_lora_rank"):
        engine.load_adapter(AdapterUpdate(version=1, peft_config=too_big), adapter_weights(1.0))
    assert engine.lora_request is current and engine.policy_version == 0
    assert [p.name for p in Path(current.lora_path).parent.iterdir()] == [Path(current.lora_path).name]


def test_fake_signatures_match_vllm_0_33(fake_vllm: ModuleType) -> None:
    from vllm import LLM, SamplingParams
    from vllm.entrypoints.llm import ENGINE_ARGS_FIELDS
    from vllm.lora.request import LoRARequest
    from vllm.outputs import CompletionOutput

    init = inspect.signature(LLM.__init__).parameters
    assert set(init) - {"self", "kwargs"} == LLM_INIT_PARAMS and init["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert ENGINE_ARGS_USED <= ENGINE_ARGS_FIELDS
    assert list(inspect.signature(LLM.generate).parameters) == GENERATE_PARAMS
    sampling = inspect.signature(SamplingParams).parameters
    assert {name: p.default for name, p in sampling.items()} == SAMPLING_FIELDS
    assert list(inspect.signature(LoRARequest).parameters) == LORA_REQUEST_FIELDS
    assert list(inspect.signature(CompletionOutput).parameters)[:5] == [
        "index", "text", "token_ids", "cumulative_logprob", "logprobs"]
    with pytest.raises(TypeError):
        LLM("m", not_an_engine_arg=1)
    with pytest.raises(ValueError):
        LoRARequest(lora_name="x", lora_int_id=0, lora_path="/tmp")  # ids start at 1


def test_fake_is_gone_after_the_fixture() -> None:
    assert "vllm" not in sys.modules or not Path(sys.modules["vllm"].__file__ or "").is_relative_to(FAKES)
    assert str(FAKES) not in sys.path
