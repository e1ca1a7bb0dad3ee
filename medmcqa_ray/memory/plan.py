"""The GPU memory of each phase of a run, from the model's architecture and the config: what
`medmcqa-ray memory` prints, what a config is checked against when it loads, and what
benchmarks/gpu_check.py measures on a lent GPU.

A colocated step (one GPU: the learner and a vLLM actor, `rollout.sleep_mode`) runs these phases, in the
order the engine and the learner follow (rollout/vllm_engine.py, training/rollout_function.py):

  vllm_start     the actor starts before the learner loads: vLLM profiles, allocates its KV cache, sleeps
  grpo_train     the learner's peak (weights, LoRA with AdamW, activations, LM head); vLLM asleep
  adapter_sync   the learner emptied its allocator cache; vLLM wakes its weights and loads the adapter
  generate       vLLM fully awake (KV cache, CUDA graphs); the learner keeps its weights and optimizer
  sft_train      the SFT stage's learner alone
  eval           the evaluation actor: vLLM generating, the hf engine scoring log-likelihoods

Exact: parameter counts, LoRA sizes, the KV bytes per token (tests compare them with transformers, PEFT
and vLLM). Estimated, and marked so: CUDA contexts, activations, the LM head, vLLM's profiling peak and CUDA
graphs; the device check measures the learner's and the hf engine's on a GPU.

vLLM level-1 sleep offloads the weights pool (LoRA slots live there) and the CUDA-graph pool and drops
the KV cache (vllm/device_allocator/sleep_mode_backend.py, 0.32): asleep, an engine keeps its CUDA context
and the little it allocated outside the pools. Level 2 would discard the weights too, and our base
weights never change (LoRA), so every wake would reload 8 GB from disk: level 1 it is (SLEEP_LEVEL).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

from medmcqa_ray.config.schema import VLLM_LORA_TARGETS, Config, Scoring, resolve_engine, vllm_lora_rank
from medmcqa_ray.memory.architecture import Architecture
from medmcqa_ray.models import dtype_name

GiB = 2**30
CUDA_CONTEXT = int(0.5 * GiB)
"""Estimate: a process's CUDA context, cuBLAS workspace and kernels (nvidia-smi shows 0.4-0.6 GiB on
Ampere and Hopper cards before any tensor)."""
OUTSIDE_POOLS = int(0.25 * GiB)
"""Estimate: what a sleeping vLLM engine keeps outside its sleep pools (sampler and staging buffers)."""
SLEEP_LEVEL = 1
"""What the vllm engine sleeps at (rollout/vllm_engine.py): level 1, as the module docstring says why."""
FUSED_TOKEN_CHUNK, FUSED_VOCAB_CHUNK = 4096, 32768
"""TRL 1.16's fused LM head tiles (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE, trl/trainer/utils.py
_CHUNKED_LOGPROB_CHUNK_SIZE; a test checks them against the installed TRL)."""
CPU_TILE_COPIES = 8
"""Estimate, from the CPU measurement (tests/test_gpu_check.py): fp32 tiles the torch fallback holds at its peak."""
LOGLIK_TOKENS = 512
"""Bound on an lm-eval medmcqa prompt with its choice (the longest real question is 1,335 characters)."""
VLLM_DEFAULT_BATCHED_TOKENS, VLLM_DEFAULT_SEQS = 8192, 256
"""vLLM's LLM-class defaults on GPUs under 70 GiB (vllm/engine/arg_utils.py): what it profiles with unless
rollout.max_num_batched_tokens / max_num_seqs say otherwise."""

NOTES = {
    "cuda_context": "CUDA context and workspaces (estimate)",
    "weights": "parameters x dtype bytes (exact)",
    "lora": "LoRA parameters in fp32 (PEFT upcasts adapters of a 16-bit model; exact)",
    "lora_grads": "their fp32 gradients during the step",
    "optimizer": "AdamW's two fp32 moments per LoRA parameter",
    "activations": "layer inputs kept by gradient checkpointing + one layer recomputed with its gradients (estimate)",
    "lm_head": "TRL's fused LM head: one tile of <= 4,096 positions x 32,768 logits at a time + the hidden states' fp32 gradient (estimate)",
    "lora_slots": "vLLM's adapter slot at max_lora_rank on every projection (exact)",
    "profile_peak": "vLLM's profiling forward: max_num_batched_tokens through a layer + the sampler on max_num_seqs (estimate)",
    "kv_cache": "vLLM's KV cache (rollout.kv_cache_gb, or what gpu_memory_utilization leaves)",
    "cuda_graphs": "vLLM's captured CUDA graphs (estimate; offloaded while asleep)",
    "outside_pools": "what a sleeping vLLM keeps outside its pools (estimate)",
    "batch": "the hf engine's batch: KV cache of its rows + their logits",
    "hf_cuda_context": "evaluation: the hf engine's process (vLLM's engine runs in its own; estimate)",
    "hf_weights": "evaluation: the hf engine that scores log-likelihoods beside vLLM (exact)",
    "hf_batch": "evaluation: its no-grad forward over eval.batch_size rows of <= 512 tokens (estimate)",
}
KEYS = {
    "grpo_train": "grpo.micro_batch_size, grpo.max_completion_length, rollout.max_model_len, grpo.gradient_checkpointing, "
                  "sft.lora.r, model.dtype",
    "sft_train": "sft.batch_size, sft.max_length, sft.gradient_checkpointing, sft.lora.r, model.dtype",
    "vllm_start": "rollout.kv_cache_gb (or rollout.gpu_memory_utilization), rollout.max_num_batched_tokens, "
                  "rollout.max_num_seqs, rollout.enforce_eager, rollout.max_lora_rank",
    "eval": "rollout.kv_cache_gb (or rollout.gpu_memory_utilization), eval.batch_size, rollout.max_model_len",
}
KEYS["generate"] = KEYS["vllm_start"] + ", " + KEYS["grpo_train"]
KEYS["adapter_sync"] = KEYS["grpo_train"]


class Phase(BaseModel):
    """One moment of a run: bytes per component, each `learner.*` or `rollout.*` (the device it is on)."""

    name: str
    components: dict[str, int]

    def on(self, device: str) -> int:
        return sum(v for k, v in self.components.items() if k.startswith(device + "."))

    def peak(self, colocated: bool) -> int:
        return sum(self.components.values()) if colocated else max(self.on("learner"), self.on("rollout"))


class MemoryPlan(BaseModel):
    model: str
    architecture: str
    """Where the config.json was read."""
    dtype: str
    device: str
    """cuda, or cpu (then the numbers are host memory and nothing is checked)."""
    colocated: bool
    """The learner and the rollout actors share one GPU: a phase's components add up on it."""
    parameters: int
    lora_parameters: int
    kv_bytes_per_token: int
    kv_tokens: int
    """Tokens the vLLM KV cache holds (0 for the hf engine)."""
    sleep_level: Optional[int]
    phases: list[Phase]
    peak_phase: str
    peak_bytes: int
    capacity_gb: Optional[float]
    """The card, in GiB (scaling.gpu_memory_gb, or the detected one); None: unknown, not checked."""

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GiB

    @property
    def fits(self) -> Optional[bool]:
        return None if self.capacity_gb is None or self.device != "cuda" else self.peak_gb <= self.capacity_gb

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def as_json(self) -> dict:
        return {**self.model_dump(exclude={"phases"}), "peak_gb": round(self.peak_gb, 3), "fits": self.fits,
                "phases": {p.name: {**p.components, "total": p.peak(self.colocated)} for p in self.phases}}


def plan_device(cfg: Config) -> str:
    """cuda when the learner or the rollout actors ask for GPUs: the device the plan is of."""
    return "cuda" if cfg.scaling.use_gpu or cfg.rollout.num_gpus_per_actor > 0 else "cpu"


def _layer_bytes_per_token(arch: Architecture, b: int) -> int:
    """One decoder layer's saved activations per token (SDPA attention, no dropout): the norms' fp32
    inputs, q/k/v and their rotated copies, attention output, the MLP's gate, up, act and product."""
    q, kv = arch.num_attention_heads * arch.head_size, arch.kv_heads * arch.head_size
    return b * (4 * arch.hidden_size + 3 * q + 3 * kv + 4 * arch.intermediate_size) + 8 * arch.hidden_size


def fused_lm_head(arch: Architecture, b: int, tokens: int, device: str) -> int:
    """TRL's fused LM head (`add_fused_lm_head`, used by its GRPO and SFT trainers): logits never exist
    whole; a tile of min(tokens, 4096) positions x min(vocab, 32768) entries at a time (Triton folds it in
    place on GPU; on CPU the torch fallback holds about CPU_TILE_COPIES fp32 copies of it), plus the hidden
    states' fp32 gradient and a few fp32 numbers per position."""
    tile = min(tokens, FUSED_TOKEN_CHUNK) * min(arch.vocab_size, FUSED_VOCAB_CHUNK)
    per_entry = b if device == "cuda" else 4 * CPU_TILE_COPIES
    return tile * per_entry + tokens * (arch.hidden_size * 4 + 4 * 16)


def learner_step(arch: Architecture, b: int, sequences: int, seq_len: int, scored: int, checkpointing: bool,
                 device: str) -> dict[str, int]:
    """Activations and the LM head of one forward/backward of `sequences` rows of `seq_len` tokens, `scored`
    positions of each with a label. On GPU TRL's head takes only the labelled positions; on CPU all of them."""
    tokens = sequences * seq_len
    layer = tokens * _layer_bytes_per_token(arch, b)
    acts = (arch.num_hidden_layers * tokens * arch.hidden_size * b + 2 * layer) if checkpointing else arch.num_hidden_layers * layer
    head_tokens = sequences * (scored if device == "cuda" else seq_len - 1)
    return {"activations": acts, "lm_head": fused_lm_head(arch, b, head_tokens, device)}


class _Rollout(BaseModel):
    """The rollout engine's components in each of its states."""

    awake: dict[str, int]
    asleep: dict[str, int]
    weights_awake: dict[str, int]
    kv_tokens: int


def _rollout_side(cfg: Config, arch: Architecture, b: int, context: int, device: str,
                  capacity_gb: Optional[float]) -> _Rollout:
    """vLLM (asleep, weights awake, awake), or the hf engine (its own weights and batch; it never sleeps)."""
    r = cfg.rollout
    params, kvpt = arch.parameters(), arch.kv_bytes_per_token(b)
    if resolve_engine(r) != "vllm":
        batch = r.max_batch_rows * r.max_model_len * kvpt + r.max_batch_rows * arch.vocab_size * 4
        awake = {"cuda_context": context, "weights": params * b, "batch": batch}
        return _Rollout(awake=awake, asleep=awake, weights_awake=awake, kv_tokens=0)
    tokens_b = r.max_num_batched_tokens or max(VLLM_DEFAULT_BATCHED_TOKENS, r.max_model_len)
    seqs = r.max_num_seqs or VLLM_DEFAULT_SEQS
    slots = arch.lora_parameters(vllm_lora_rank(r.max_lora_rank), sorted(VLLM_LORA_TARGETS)) * b
    profile = tokens_b * _layer_bytes_per_token(arch, b) + 3 * seqs * arch.vocab_size * 4
    graphs = 0 if r.enforce_eager or device != "cuda" else arch.num_hidden_layers * min(2 * seqs, 512) * arch.hidden_size * b * 4
    base = {"cuda_context": context, "weights": params * b, "lora_slots": slots}
    if r.kv_cache_gb:
        kv = int(r.kv_cache_gb * GiB)
    else:  # vLLM gives the KV cache what its share of the card leaves after the rest
        kv = max(0, int(r.gpu_memory_utilization * (capacity_gb or 0) * GiB) - sum(base.values()) - profile - graphs)
    awake = base | {"profile_peak": profile, "kv_cache": kv, "cuda_graphs": graphs, "outside_pools": OUTSIDE_POOLS}
    if not r.sleep_mode:
        return _Rollout(awake=awake, asleep=awake, weights_awake=awake, kv_tokens=kv // kvpt)
    return _Rollout(awake=awake, asleep={"cuda_context": context, "outside_pools": OUTSIDE_POOLS},
                    weights_awake=base | {"outside_pools": OUTSIDE_POOLS}, kv_tokens=kv // kvpt)


def _loglik_scorer(cfg: Config, arch: Architecture, b: int, context: int) -> dict[str, int]:
    """Evaluation's hf engine beside vLLM, scoring log-likelihoods (evaluation/predictor.py). No gradients:
    one layer's MLP working set at a time over the batch's lm-eval prompts (question and options, bounded by
    LOGLIK_TOKENS), and logits only where a choice is scored."""
    if cfg.eval.scoring == Scoring.GENERATE or resolve_engine(cfg.rollout) != "vllm":
        return {}
    rows = cfg.eval.batch_size
    tokens = rows * min(cfg.rollout.max_model_len, LOGLIK_TOKENS)
    return {"hf_cuda_context": context, "hf_weights": arch.parameters() * b,
            "hf_batch": tokens * b * (3 * arch.intermediate_size + 2 * arch.hidden_size) + rows * 4 * arch.vocab_size * 4}


def _colocated(cfg: Config, device: str) -> bool:
    r = cfg.rollout
    learner_gpu = cfg.scaling.resources_per_worker.get("GPU", 1.0)
    return (device == "cuda" and cfg.scaling.use_gpu and r.num_gpus_per_actor > 0
            and r.num_gpus_per_actor * r.num_actors + learner_gpu <= 1.0 + 1e-9)


def plan_memory(cfg: Config, arch: Architecture, capacity_gb: Optional[float] = None) -> MemoryPlan:
    device = plan_device(cfg)
    dtype = dtype_name(cfg.model, device)
    b = 4 if dtype == "float32" else 2
    g, s = cfg.grpo, cfg.sft
    context = CUDA_CONTEXT if device == "cuda" else 0
    lora = arch.lora_parameters(s.lora.r, s.lora.target_modules)
    resident = {"cuda_context": context, "weights": arch.parameters() * b, "lora": 4 * lora, "optimizer": 8 * lora}
    training = resident | {"lora_grads": 4 * lora}
    micro = g.micro_batch_size or g.prompts_per_step * g.num_generations
    # GRPO scores the completion's positions; SFT's completion-only loss at most every position (the bound).
    grpo = learner_step(arch, b, micro, cfg.rollout.max_model_len, g.max_completion_length, g.gradient_checkpointing, device)
    sft = learner_step(arch, b, s.batch_size, s.max_length, s.max_length, s.gradient_checkpointing, device)
    rollout = _rollout_side(cfg, arch, b, context, device, capacity_gb)

    def on(where: str, parts: dict[str, int]) -> dict[str, int]:
        return {f"{where}.{k}": v for k, v in parts.items()}

    phases = [
        Phase(name="vllm_start", components=on("learner", {"cuda_context": context}) | on("rollout", rollout.awake)),
        Phase(name="grpo_train", components=on("learner", training | grpo) | on("rollout", rollout.asleep)),
        Phase(name="adapter_sync", components=on("learner", resident) | on("rollout", rollout.weights_awake)),
        Phase(name="generate", components=on("learner", resident) | on("rollout", rollout.awake)),
        Phase(name="sft_train", components=on("learner", training | sft)),
        Phase(name="eval", components=on("rollout", rollout.awake | _loglik_scorer(cfg, arch, b, context))),
    ]
    colocated = _colocated(cfg, device)
    peak = max(phases, key=lambda p: p.peak(colocated))
    return MemoryPlan(model=cfg.model.name, architecture=arch.source, dtype=dtype, device=device, colocated=colocated,
                      parameters=arch.parameters(), lora_parameters=lora, kv_bytes_per_token=arch.kv_bytes_per_token(b),
                      kv_tokens=rollout.kv_tokens, sleep_level=SLEEP_LEVEL if cfg.rollout.sleep_mode else None,
                      phases=phases, peak_phase=peak.name, peak_bytes=peak.peak(colocated), capacity_gb=capacity_gb)
