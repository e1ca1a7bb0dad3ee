"""Stand-in vllm.entrypoints.llm.LLM: places vLLM's Ray-executor workers for a tensor-parallel engine and
generates placeholder tokens; no model is loaded.

`LLM.__init__` names every parameter it accepts (no **kwargs), so an engine passing a name outside this
list fails here; test_vllm_standin.py checks each name against the real LLM.__init__ and EngineArgs, and
`generate`, `sleep`, `wake_up` and `llm_engine.add_lora/remove_lora` against the real signatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..inputs import TokensPrompt
from ..logprobs import Logprob
from ..lora.request import LoRARequest
from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import SamplingParams


def ray_executor_workers(world_size: int) -> list[Any]:
    """What vLLM's Ray executor does before it loads a model (vllm/v1/executor/ray_utils.py,
    initialize_ray_cluster and _verify_bundles; ray_executor.py, _init_workers_ray), without a GPU: use
    the caller's placement group if it has one (else make a PACK group, which needs a GPU on the caller's
    node), refuse a bundle of more than one GPU, fewer GPU bundles than workers, or a group without a
    bundle on the caller's node; then start one worker per GPU bundle (no CPU, one GPU) in that bundle."""
    import ray
    from ray._private.state import available_resources_per_node
    from ray.util.placement_group import get_current_placement_group, placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = get_current_placement_group()
    here = ray.get_runtime_context().get_node_id()
    if group is None:
        if available_resources_per_node()[here].get("GPU", 0) < 1:
            raise ValueError("Current node has no GPU available. vLLM engine cannot start without GPU.")
        group = placement_group([{"GPU": 1.0} for _ in range(world_size)], strategy="PACK")
    ray.get(group.ready(), timeout=60)
    gpu_bundles = []
    for i, bundle in enumerate(group.bundle_specs):
        if bundle.get("GPU", 0) > 1:
            raise ValueError("Placement group bundle cannot have more than 1 GPU.")
        if bundle.get("GPU", 0):
            gpu_bundles.append(i)
    if world_size > len(gpu_bundles):
        raise ValueError(f"The number of required GPUs exceeds the total number of available GPUs in the placement "
                         f"group. Required number of devices: {world_size}. Total number of devices: {len(gpu_bundles)}.")
    if here not in set(placement_group_table(group)["bundles_to_node_id"].values()):
        raise RuntimeError(f"driver node id {here} is not included in a placement group {group.id}.")
    worker = ray.remote(num_cpus=0, num_gpus=1)(StandinRayWorker)
    workers = [worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_capture_child_tasks=True, placement_group_bundle_index=i)).remote()
        for i in gpu_bundles[:world_size]]
    ray.get([w.where.remote() for w in workers], timeout=120)  # vLLM asks each worker for its node first
    return workers


class StandinRayWorker:
    """Stands where vLLM's RayWorkerWrapper would hold one GPU's shard of the model."""

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids()}


class LLMEngine:
    """The LoRA calls of vllm.v1.engine.llm_engine.LLMEngine: an adapter must be a folder vLLM could read."""

    def __init__(self, enable_lora: bool, kv_cache_tokens: int) -> None:
        self.enable_lora = enable_lora
        self.loras: dict[int, LoRARequest] = {}
        # What the engine core reports back once it allocated its KV cache (vllm_config.cache_config).
        self.vllm_config = SimpleNamespace(cache_config=SimpleNamespace(num_gpu_blocks=kv_cache_tokens // 16, block_size=16))

    def add_lora(self, lora_request: LoRARequest) -> bool:
        if not self.enable_lora:
            raise ValueError("LoRA is not enabled. Use --enable-lora to enable LoRA.")
        folder = Path(lora_request.lora_path)
        missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"adapter folder {folder} lacks {missing}")
        self.loras[lora_request.lora_int_id] = lora_request
        return True

    def remove_lora(self, lora_id: int) -> bool:
        return self.loras.pop(lora_id, None) is not None


class LLM:
    def __init__(
        self,
        model: str,
        *,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        gpu_memory_utilization: float = 0.92,
        enforce_eager: bool = False,
        hf_token: bool | str | None = None,
        kv_cache_memory_bytes: int | None = None,
        # EngineArgs fields (the real LLM passes its **kwargs to EngineArgs):
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        logprobs_mode: str = "raw_logprobs",
        enable_sleep_mode: bool = False,
        enable_chunked_prefill: bool | None = None,
        distributed_executor_backend: str | None = None,
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int | None = None,
    ) -> None:
        # EngineArgs.create_engine_config reads the caller's placement group when it runs in a Ray actor and
        # hands it to the engine-core process; this stand-in stays in the caller's process.
        self.workers = ray_executor_workers(tensor_parallel_size) if distributed_executor_backend == "ray" else []
        self.enable_sleep_mode = enable_sleep_mode
        self.sleeping = False
        self.llm_engine = LLMEngine(enable_lora, kv_cache_tokens=(kv_cache_memory_bytes or 2**30) // 1024)

    def sleep(self, level: int = 1, mode: str = "abort"):
        self.sleeping = True

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.sleeping = False
        return True

    def generate(
        self,
        prompts: TokensPrompt | Sequence[TokensPrompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Sequence[LoRARequest] | LoRARequest | None = None,
        priority: int | Sequence[int] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        if self.sleeping:
            raise RuntimeError("generate on a sleeping engine (wake_up first)")
        prompts = [prompts] if isinstance(prompts, dict) else list(prompts)
        if not all(isinstance(p, dict) and p.keys() == {"prompt_token_ids"} for p in prompts):
            raise TypeError("the stand-in takes TokensPrompt(prompt_token_ids=[...]) prompts only")
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError("the stand-in takes one SamplingParams for all prompts")
        if lora_request is not None:
            self.llm_engine.add_lora(lora_request)  # vLLM loads an adapter it does not hold on first use
        max_tokens = params.max_tokens or 16
        outputs = []
        for i, prompt in enumerate(prompts):
            samples = []
            for j in range(params.n):
                length = min(max_tokens, 2 + (i + j) % 4)
                token_ids = [100 + 10 * j + k for k in range(length)]
                logprobs = None if params.logprobs is None else [{t: Logprob(logprob=-1.0, rank=1)} for t in token_ids]
                samples.append(CompletionOutput(
                    index=j, text="".join(f"<{t}>" for t in token_ids), token_ids=token_ids,
                    cumulative_logprob=-float(length) if logprobs else None, logprobs=logprobs,
                    finish_reason="length" if length == max_tokens else "stop"))
            outputs.append(RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=list(prompt["prompt_token_ids"]),
                                         prompt_logprobs=None, outputs=samples, finished=True))
        return outputs
