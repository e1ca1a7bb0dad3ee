"""The memory plan measured (`gpu_check.py --shape NAME`): the model a config names, built from its bundled
config.json with random weights (nothing downloaded), runs the config's SFT step and GRPO learner step
through TRL with our own argument builders (batch, micro-batches, lengths, LoRA, gradient checkpointing), and
its memory per phase is printed beside medmcqa_ray.memory's prediction; then the hf engine decodes at that
shape. No Ray, no vLLM (the device has neither): vLLM's components stay predictions.

Shapes:
    qwen3-4b   configs/gpu.yaml, Qwen3-4B-Base in bf16 (the device run: one H100/H200, under 8 minutes)
    tiny       configs/ci.yaml, the embedded tiny model (the CPU test: exact counts only, no memory stats)

Exact on every device: parameters (the built model against the plan), LoRA parameters (PEFT's), AdamW's
state (its tensors after the step). On CUDA, per phase, torch.cuda.max_memory_allocated against the plan's
learner components less the CUDA context (which torch does not count), reserved memory beside it:
    weights        after the model is built
    grpo_train     the peak of one optimiser step (prompt padded to rollout.max_model_len - max_completion_length,
                   completions of max_completion_length: the plan's bound), in micro-batches of grpo.micro_batch_size
    adapter_sync   allocated after that step, once the cache is emptied (weights, LoRA, AdamW state)
    sft_train      the peak of one SFT micro-batch of sft.batch_size x sft.max_length
and the hf engine's decode tokens/s (16 prompts, 128 new tokens, greedy). The goal: each measured phase
within 10% of the plan (`within_10pct`); a miss is reported, not failed: the plan's estimates are what it
calibrates.

Expected on an H100 (80 GiB) for qwen3-4b, from the plan (GiB, allocated, context excluded): weights 7.49,
grpo_train 13.81, adapter_sync 7.86, sft_train 12.00; not yet run on a device. On CPU (`--shape tiny`) each
step's allocations, from the profiler's memory timeline, are printed beside the plan's (`cpu_step_*`): there
TRL's fused LM head runs its torch fallback over every position, which the plan models separately.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"qwen3-4b": ("configs/gpu.yaml", "Qwen/Qwen3-4B-Base", []),
          # Short sequences: the CPU test checks the flow and the exact counts, not memory.
          "tiny": ("configs/ci.yaml", "embedded:tiny-random-smollm2", ["rollout.max_model_len=128"])}
# The learner's phases only: the engine is the hf one here (no vLLM on the device), sized small.
OVERRIDES = ["rollout.engine=hf", "rollout.sleep_mode=false", "rollout.colocate=false", "rollout.max_batch_rows=16",
             "tracking.enabled=false"]


def _say(msg: str) -> None:
    print(f"[plan_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _learner_bytes(plan, phase: str) -> int:
    return sum(v for k, v in plan.phase(phase).components.items() if k.startswith("learner.") and not k.endswith("cuda_context"))


def _cpu_peak(run) -> int:
    """The most memory torch's tensors held while `run()` ran on CPU, from the profiler's memory timeline
    (CPU has no allocator statistics): what the step allocated on top of what existed before it."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run()
    path = Path(tempfile.mkdtemp(prefix="plan-check-timeline-")) / "timeline.json"
    with warnings.catch_warnings():  # deprecated in favour of a CUDA-only API
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return max((sum(s) for s in sizes), default=0)


def run_plan_check(args, result: dict, tokenizer) -> list[str]:
    import datasets
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback
    from trl import GRPOTrainer, SFTTrainer

    from medmcqa_ray.config import load_config
    from medmcqa_ray.memory.architecture import read_architecture
    from medmcqa_ray.memory.plan import GiB, plan_memory
    from medmcqa_ray.rewards.registry import REWARD_FIELD, reward_names, trl_reward_funcs
    from medmcqa_ray.training.grpo_trainer import grpo_args
    from medmcqa_ray.training.sft_config import lora_config, sft_args

    failures: list[str] = []
    gpu = args.device == "cuda"
    config_file, model_name, extra = SHAPES[args.shape]
    cfg = load_config([REPO / config_file], [*OVERRIDES, *extra, f"model.name={model_name}", "scaling.gpu_memory_gb=null",
                                             *(["scaling.use_gpu=true"] if gpu else ["scaling.use_gpu=false"])])
    arch = read_architecture(cfg.model)
    capacity = torch.cuda.get_device_properties(0).total_memory / GiB if gpu else None
    plan = plan_memory(cfg, arch, capacity)
    raw = json.loads(Path(arch.source).read_text())
    hf_config = AutoConfig.for_model(raw.pop("model_type"), **{k: v for k, v in raw.items() if k != "architectures"})
    dtype = torch.bfloat16 if gpu else torch.float32
    device = "cuda" if gpu else "cpu"
    measured: dict[str, float] = {}

    def allocated() -> int:
        return torch.cuda.memory_allocated() if gpu else 0

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    measured["weights"] = allocated()
    _say(f"{model_name}: {params / 1e9:.3f} B parameters (plan {plan.parameters / 1e9:.3f} B)")
    if params != plan.parameters:
        failures.append(f"parameters: built {params}, plan {plan.parameters}")

    # --- GRPO: a rollout_func that returns the plan's bound shape: prompts of max_model_len - completion
    # tokens, completions of max_completion_length (no EOS), random ids the tokenizer can decode.
    g, r = cfg.grpo, cfg.rollout
    prompt_len, completion_len = r.max_model_len - g.max_completion_length, g.max_completion_length
    rng = random.Random(0)
    vocab = min(len(tokenizer), hf_config.vocab_size)

    def rollout_func(prompts, trainer):
        n = len(prompts)
        out = {"prompt_ids": [[rng.randrange(vocab) for _ in range(prompt_len)] for _ in range(n)],
               "completion_ids": [[rng.randrange(100, vocab) for _ in range(completion_len)] for _ in range(n)],
               "logprobs": [[-1.0] * completion_len for _ in range(n)]}
        return out | {REWARD_FIELD.format(name): [rng.random() for _ in range(n)] for name in reward_names(cfg.rewards)}

    class StepPeak(TrainerCallback):
        def __init__(self):
            self.peak, self.reserved, self.seconds, self.began = 0, 0, 0.0, 0.0

        def on_step_begin(self, args_, state, control, **kwargs):
            self.began = time.monotonic()

        def on_step_end(self, args_, state, control, **kwargs):
            if gpu:
                torch.cuda.synchronize()
                self.peak, self.reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            self.seconds = time.monotonic() - self.began

    work = Path(tempfile.mkdtemp(prefix="plan-check-"))
    prompts = datasets.Dataset.from_list([{"prompt": f"question {i}"} for i in range(g.prompts_per_step)])
    step = StepPeak()
    grpo_cfg = grpo_args(cfg.model_copy(update={"grpo": g.model_copy(update={"max_steps": 1})}), work / "grpo", device)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    # TRL types reward_funcs as an invariant list of a union, which no list[Callable] matches.
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward_funcs(cfg.rewards),  # type: ignore[arg-type]
                          args=grpo_cfg, train_dataset=prompts, processing_class=tokenizer, rollout_func=rollout_func,
                          peft_config=lora_config(cfg.sft.lora), callbacks=[step])
    peft_model = trainer.model
    assert isinstance(peft_model, PeftModel)  # TRL wraps the model, given a peft_config
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    if gpu:
        trainer.train()
    else:
        measured["grpo_cpu"] = _cpu_peak(trainer.train)
    assert trainer.optimizer is not None  # made by train()
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    optimizer_bytes = sum(t.numel() * t.element_size() for t in state)
    measured["grpo_train"], measured["grpo_reserved"], measured["grpo_step_s"] = step.peak, step.reserved, step.seconds
    del state
    trainer.optimizer.zero_grad(set_to_none=True)
    if gpu:
        torch.cuda.empty_cache()
    measured["adapter_sync"] = allocated()
    _say(f"GRPO step {step.seconds:.1f} s, peak {step.peak / GiB:.2f} GiB; LoRA {lora / 1e6:.2f} M")
    if lora != plan.lora_parameters:
        failures.append(f"LoRA parameters: PEFT {lora}, plan {plan.lora_parameters}")
    planned_optimizer = plan.phase("adapter_sync").components["learner.optimizer"]
    if optimizer_bytes != planned_optimizer:
        failures.append(f"AdamW state: {optimizer_bytes} bytes, plan {planned_optimizer}")
    base = peft_model.unload()  # the base model without the GRPO step's LoRA, for SFT's own
    del trainer, peft_model

    # --- SFT: one micro-batch of the config's shape, tokenised already (input_ids), completion-only loss.
    s = cfg.sft
    rows = [{"prompt": [rng.randrange(vocab) for _ in range(s.max_length // 2)],
             "completion": [rng.randrange(vocab) for _ in range(s.max_length - s.max_length // 2)]}
            for _ in range(s.batch_size)]
    sft_data = datasets.Dataset.from_list([{"input_ids": x["prompt"] + x["completion"],
                                            "completion_mask": [0] * len(x["prompt"]) + [1] * len(x["completion"])}
                                           for x in rows])
    sft_cfg = sft_args(cfg.model_copy(update={"sft": s.model_copy(update={"max_steps": 1, "grad_accum": 1})}), work / "sft", device)
    step = StepPeak()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sft_trainer = SFTTrainer(model=base, args=sft_cfg, train_dataset=sft_data, processing_class=tokenizer,
                             peft_config=lora_config(s.lora), callbacks=[step])
    if gpu:
        sft_trainer.train()
    else:
        measured["sft_cpu"] = _cpu_peak(sft_trainer.train)
    measured["sft_train"], measured["sft_reserved"], measured["sft_step_s"] = step.peak, step.reserved, step.seconds
    _say(f"SFT step {step.seconds:.1f} s, peak {step.peak / GiB:.2f} GiB")
    sft_model = sft_trainer.model
    assert isinstance(sft_model, PeftModel)
    merged = sft_model.unload()
    del sft_trainer, sft_model

    # --- the hf engine at this shape: the random base saved, loaded as the engine loads any model
    engine_stats = _hf_engine(merged, tokenizer, work, gpu, vocab)
    del merged

    compare = {}
    for phase in ("weights", "grpo_train", "adapter_sync", "sft_train"):
        predicted = (plan.phase("grpo_train").components["learner.weights"] if phase == "weights"
                     else _learner_bytes(plan, phase))
        got = measured[phase]
        compare[phase] = {"predicted_gib": round(predicted / GiB, 3), "measured_gib": round(got / GiB, 3) if gpu else None,
                          "ratio": round(got / predicted, 3) if gpu and predicted else None,
                          "within_10pct": (abs(got / predicted - 1) <= 0.10) if gpu and predicted else None}
    if not gpu:  # the step's own allocations (the timeline starts after the weights exist) against the plan's
        for phase in ("grpo_train", "sft_train"):
            predicted = _learner_bytes(plan, phase) - plan.phase(phase).components["learner.weights"]
            got = measured[phase.replace("_train", "_cpu")]
            compare[phase] |= {"cpu_step_predicted_mib": round(predicted / 2**20, 1), "cpu_step_measured_mib": round(got / 2**20, 1),
                               "cpu_step_ratio": round(got / predicted, 3)}
    result.update(shape=args.shape, config=config_file, model=model_name, plan=plan.as_json(), phases=compare,
                  exact={"parameters": params, "lora_parameters": lora, "optimizer_bytes": optimizer_bytes},
                  reserved_gib={k: round(measured[k] / GiB, 3) for k in ("grpo_reserved", "sft_reserved")} if gpu else None,
                  step_s={"grpo": round(measured["grpo_step_s"], 2), "sft": round(measured["sft_step_s"], 2)},
                  engine=engine_stats)
    return failures


def _hf_engine(model, tokenizer, work: Path, gpu: bool, vocab: int) -> dict:
    import torch

    from medmcqa_ray.config import ModelSection
    from medmcqa_ray.rollout.hf_engine import HFEngine
    from medmcqa_ray.rollout.types import Sampling

    folder = work / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    engine = HFEngine(ModelSection(name=str(folder), dtype="bfloat16" if gpu else "float32"), device="cuda" if gpu else "cpu")
    rng = random.Random(1)
    prompts = [[rng.randrange(vocab) for _ in range(64)] for _ in range(16)]
    new_tokens = 128 if gpu else 8
    start = time.monotonic()
    out = engine.generate(prompts, Sampling(temperature=0, max_new_tokens=new_tokens))
    if gpu:
        torch.cuda.synchronize()
    seconds = time.monotonic() - start
    tokens = sum(len(g[0].token_ids) for g in out)
    return {"prompts": len(prompts), "new_tokens": new_tokens, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if gpu else None}
