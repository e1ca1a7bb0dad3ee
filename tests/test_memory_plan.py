"""The GPU memory plan (medmcqa_ray/memory/): exact where it can be (parameters against what transformers
builds, LoRA against PEFT, the KV bytes per token), gpu.yaml fitting its 22 GiB card as its header says and
refused on a 16 GiB one, the CLI as users run it, and a model whose architecture cannot be read offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medmcqa_ray.config import ModelSection, load_config
from medmcqa_ray.errors import ConfigError
from medmcqa_ray.memory.architecture import ArchitectureError, read_architecture
from medmcqa_ray.memory.check import memory_plan
from medmcqa_ray.memory.plan import GiB

from .conftest import REPO

QWEN = "Qwen/Qwen3-4B-Base"
MODELS = [QWEN, "embedded:smollm2-135m-instruct", "embedded:tiny-random-smollm2"]


def _meta_model(arch):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(open(arch.source).read())
    config = AutoConfig.for_model(raw.pop("model_type"), **{k: v for k, v in raw.items() if k != "architectures"})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", MODELS)
def test_parameters_and_lora_are_what_transformers_and_peft_build(name):
    from peft import LoraConfig, get_peft_model

    arch = read_architecture(ModelSection(name=name))
    model = _meta_model(arch)
    assert arch.parameters() == sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM"))
    assert arch.lora_parameters(16, targets) == sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    assert arch.lora_parameters(8, ["q_proj", "v_proj"]) * 2 == arch.lora_parameters(16, ["q_proj", "v_proj"])


def test_the_plans_lm_head_tiles_are_trls():
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    from medmcqa_ray.memory import plan

    assert (plan.FUSED_TOKEN_CHUNK, plan.FUSED_VOCAB_CHUNK) == (chunked_logprob.TOKEN_CHUNK_SIZE,
                                                               utils._CHUNKED_LOGPROB_CHUNK_SIZE)


def test_qwen3_4b_figures_from_its_model_card():
    arch = read_architecture(ModelSection(name=QWEN))
    assert arch.source.endswith("Qwen--Qwen3-4B-Base.json")  # bundled: no hub, no cache needed
    assert arch.parameters() == 4_022_468_096
    assert arch.lora_parameters(16, sorted(arch.module_shapes())) == 33_030_144
    assert arch.kv_bytes_per_token(2) == 2 * 36 * 8 * 128 * 2 == 147_456


def test_gpu_yaml_fits_its_card_and_its_header_is_the_plan():
    cfg = load_config([REPO / "configs" / "gpu.yaml"])
    plan = memory_plan(cfg)
    assert plan.colocated and plan.fits and plan.capacity_gb == 22 and plan.sleep_level == 1
    totals = {p.name: round(p.peak(True) / GiB, 2) for p in plan.phases}
    header = (REPO / "configs" / "gpu.yaml").read_text()
    for name, total in totals.items():  # every phase's total is written in the header as the plan prints it
        assert f"{name} {total:.2f}" in header, (name, total)
    assert f"holds {plan.kv_tokens:,} tokens" in header
    # The learner trains while vLLM sleeps: its weights are not on the GPU then, and the KV cache is not either.
    train = plan.phase("grpo_train").components
    assert "rollout.weights" not in train and "rollout.kv_cache" not in train
    assert plan.phase("adapter_sync").components["rollout.weights"] > 0 and "rollout.kv_cache" not in plan.phase("adapter_sync").components
    # The step's samples fit the KV cache at once.
    assert plan.kv_tokens >= cfg.grpo.prompts_per_step * cfg.grpo.num_generations * cfg.rollout.max_model_len


def test_gpu_yaml_on_a_16_gib_card_is_refused_at_load_naming_the_phase():
    with pytest.raises(ConfigError, match=r"scaling\.gpu_memory_gb: .* in phase eval .* more than the card's 16 GiB; "
                                          r"sized by rollout\.kv_cache_gb"):
        load_config([REPO / "configs" / "gpu.yaml"], ["scaling.gpu_memory_gb=16"])
    # Twice the prompts in one pass: the learner's step is what does not fit.
    with pytest.raises(ConfigError, match=r"in phase grpo_train \(learner\.activations .*grpo\.micro_batch_size"):
        load_config([REPO / "configs" / "gpu.yaml"], ["grpo.micro_batch_size=null", "grpo.prompts_per_step=8"])


def test_a_model_whose_architecture_cannot_be_read_offline_names_where_it_looked(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"model\.name: cannot read nobody/no-such-model's config\.json offline; "
                                          r"looked in .*nobody--no-such-model\.json, the hub cache .*HF_HUB_OFFLINE=1"):
        load_config([REPO / "configs" / "gpu.yaml"], ["model.name=nobody/no-such-model"])
    with pytest.raises(ArchitectureError, match="without config.json"):
        read_architecture(ModelSection(name=str(REPO / "configs")))


def test_memory_command_as_users_run_it():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "medmcqa_ray.cli", "memory", "--config", "configs/gpu.yaml"]
    table = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "peak: fits: 21.40 GiB at eval of 22 GiB" in table.stdout
    assert "learner.activations" in table.stdout and "vLLM sleep level 1" in table.stdout
    plan = json.loads(subprocess.run(cli + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120).stdout)
    assert plan["fits"] is True and plan["capacity_gb"] == 22 and plan["peak_gb"] == pytest.approx(21.4, abs=0.01)
    assert plan["phases"]["generate"]["learner.weights"] == 4_022_468_096 * 2
    assert set(plan["phases"]) == {"vllm_start", "grpo_train", "adapter_sync", "generate", "sft_train", "eval"}
    refused = subprocess.run(cli + ["scaling.gpu_memory_gb=16"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "in phase eval" in refused.stderr
    cpu = subprocess.run([*cli[:-1], "configs/local.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert cpu.returncode == 0 and "runs on CPU" in cpu.stdout


def test_cpu_configs_are_not_checked_and_sleep_mode_stays_refused_without_a_gpu():
    cfg = load_config([REPO / "configs" / "ci.yaml"])
    assert memory_plan(cfg).fits is None
    with pytest.raises(ConfigError, match=r"rollout\.sleep_mode: vLLM's sleep mode needs CUDA"):
        load_config([REPO / "configs" / "ci.yaml"], ["rollout.engine=vllm", "rollout.sleep_mode=true"])
    with pytest.raises(ConfigError, match=r"rollout\.sleep_mode: only the vllm engine sleeps"):
        load_config([REPO / "configs" / "ci.yaml"], ["rollout.num_gpus_per_actor=0.5", "rollout.sleep_mode=true"])
    with pytest.raises(ConfigError, match=r"rollout\.colocate: the colocated sequence is the vllm engine's"):
        load_config([REPO / "configs" / "ci.yaml"], ["rollout.colocate=true"])
    with pytest.raises(ConfigError, match=r"grpo\.micro_batch_size: 3 must divide"):
        load_config([REPO / "configs" / "ci.yaml"], ["grpo.micro_batch_size=3"])
