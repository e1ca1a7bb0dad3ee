"""vLLM rollout engine (GPU). `vllm` is imported inside the methods, so this module imports on a CPU machine
that does not have it.

Written against vLLM 0.33.0 (its source was read; tests/fakes/vllm mirrors the parts used here and cites
the files). Decisions that come from that source:
- top_k: 0 is vLLM's "off" value (-1 is still accepted quietly), the same convention as `Sampling.top_k`.
- logprobs: `logprobs_mode="raw_logprobs"` makes vLLM return log-softmax of the model's logits before
  temperature/top-k/top-p/min-p (its default in 0.33, set explicitly so a changed default cannot silently
  change what the learner compares against); `logprobs=0` returns just the sampled token's logprob.
- LoRA: `LLM` has no add/remove call in 0.33; its engine does (`llm.llm_engine.add_lora/remove_lora`).
- vLLM 0.33 rejects temperature > 2 and greedy sampling with n > 1 (the latter is handled below).
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from medmcqa_ray.config import ModelConfig, RolloutConfig
from medmcqa_ray.models import local_model_path, torch_dtype
from medmcqa_ray.rollout import tensor_parallel
from medmcqa_ray.rollout.engine import RolloutEngine
from medmcqa_ray.rollout.types import AdapterUpdate, Completion, Sampling

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The only max_lora_rank values vLLM 0.33 accepts (vllm/config/lora.py, MaxLoRARanks)."""

LOGPROBS_MODE = "raw_logprobs"
GREEDY_EPS = 1e-5
"""vLLM samples greedily below this temperature (vllm/sampling_params.py, _SAMPLING_EPS)."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank` (rollout.max_lora_rank is any positive int)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"rollout.max_lora_rank: {rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


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

    def __init__(self, model_cfg: ModelConfig, rollout_cfg: RolloutConfig) -> None:
        from vllm import LLM

        # vLLM loads adapters from folders: one per version under a folder this engine owns and removes.
        self._adapter_root = Path(tempfile.mkdtemp(prefix="medmcqa-vllm-lora-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._adapter_root), ignore_errors=True)
        self.lora_request: Any = None
        """The current vllm LoRARequest; None while generating with the base model."""
        self._next_lora_id = 1  # vLLM needs ids > 0, unique per adapter: a fresh one for every load
        token = model_cfg.hub_token.get_secret_value() if model_cfg.hub_token else None
        # Tensor parallel: vLLM's Ray executor, inside the placement group this actor was given.
        backend = tensor_parallel.executor_backend(rollout_cfg)
        self.llm = LLM(
            model=local_model_path(model_cfg),
            revision=model_cfg.revision,
            hf_token=token,
            trust_remote_code=model_cfg.trust_remote_code,
            # Our "auto" is bfloat16 on GPU; vLLM's "auto" would turn a float32 checkpoint into float16.
            dtype=str(torch_dtype(model_cfg, "cuda")).removeprefix("torch."),
            tensor_parallel_size=rollout_cfg.tensor_parallel_size,
            gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
            max_model_len=rollout_cfg.max_model_len,
            enable_lora=True,
            max_lora_rank=vllm_lora_rank(rollout_cfg.max_lora_rank),
            logprobs_mode=LOGPROBS_MODE,
            **({"distributed_executor_backend": backend} if backend else {}),
        )

    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]:
        if not prompts:
            return []
        from vllm import SamplingParams

        if sampling.tempered_logprobs and abs(sampling.temperature - 1.0) > GREEDY_EPS and sampling.temperature >= GREEDY_EPS:
            raise ValueError("the vllm engine reports raw logprobs (logprobs_mode=raw_logprobs); tempered logprobs "
                             "need temperature 1.0 (set grpo.temperature=1.0 or use rollout.engine=hf)")
        # vLLM rejects greedy sampling with n > 1; greedy samples are identical, so ask for one and copy it.
        greedy = sampling.temperature < GREEDY_EPS
        params = SamplingParams(
            n=1 if greedy else sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k,  # 0 = off in both vLLM 0.33 and Sampling
            min_p=sampling.min_p, max_tokens=sampling.max_new_tokens, seed=sampling.seed,
            logprobs=0,  # 0 extra tokens: only the sampled token's logprob
        )
        outputs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        results = [to_completions(i, out, self.policy_version) for i, out in enumerate(outputs)]
        if greedy and sampling.n > 1:
            results = [[c.model_copy(update={"sample_index": j}) for j in range(sampling.n)] for [c] in results]
        return results

    def load_adapter(self, update: AdapterUpdate, weights: dict[str, Any]) -> None:
        """`weights`: a PEFT adapter state dict (get_peft_model_state_dict keys, no adapter name)."""
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
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._next_lora_id += 1
        old, self.lora_request = self.lora_request, request
        self.policy_version = update.version
        if old is not None:
            # False only means vLLM's LRU cache (max_cpu_loras defaults to max_loras=1) already evicted it.
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def health(self) -> dict[str, Any]:
        lora_id = self.lora_request.lora_int_id if self.lora_request is not None else None
        return {**super().health(), "lora_id": lora_id}
