"""Fake vllm.entrypoints.llm.LLM and its `llm_engine` (vllm.v1.engine.llm_engine.LLMEngine's LoRA calls).

Generation is deterministic (see `fake_sample`), and every call is recorded for the tests. Adapters are
read from their folder the way vLLM reads them (adapter_config.json + adapter_model.safetensors), so an
engine that writes a wrong folder, or deletes it too early, fails here too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open
from vllm.logprobs import Logprob
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

MODEL_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")
# LLM.__init__ passes **kwargs to EngineArgs, a dataclass: an unknown name is a TypeError there. These are
# the EngineArgs fields (vllm/engine/arg_utils.py) the engine may set; any other name fails in this fake.
ENGINE_ARGS_FIELDS = frozenset({"max_model_len", "enable_lora", "max_lora_rank", "max_loras", "max_cpu_loras",
                                "logprobs_mode", "max_logprobs", "enforce_eager", "disable_log_stats",
                                "distributed_executor_backend"})
EXECUTOR_BACKENDS = ("ray", "mp", "uni", "external_launcher")


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
    worker = ray.remote(num_cpus=0, num_gpus=1)(FakeRayWorker)
    workers = [worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_capture_child_tasks=True, placement_group_bundle_index=i)).remote()
        for i in gpu_bundles[:world_size]]
    ray.get([w.where.remote() for w in workers], timeout=120)  # vLLM asks each worker for its node first
    return workers


class FakeRayWorker:
    """Stands where vLLM's RayWorkerWrapper would hold one GPU's shard of the model."""

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids()}


def fake_logprob(token_id: int) -> float:
    return -((token_id % 13) + 1) / 8


def fake_sample(prompt_index: int, sample_index: int, lora_id: int, max_tokens: int) -> tuple[list[int], str]:
    """Token ids and finish reason of one sample: ids encode (adapter id, prompt, sample, position)."""
    natural = 2 + (prompt_index + sample_index) % 4
    length, reason = (max_tokens, "length") if natural >= max_tokens else (natural, "stop")
    base = 1000 * lora_id + 100 * (prompt_index % 10) + 10 * (sample_index % 10)
    return [base + k for k in range(length)], reason


def fake_text(token_ids: Sequence[int]) -> str:
    return "".join(f"<{t}>" for t in token_ids)


class LLMEngine:
    """The LoRA part of vllm.v1.engine.llm_engine.LLMEngine, with vLLM's LRU adapter cache."""

    def __init__(self, enable_lora: bool, max_lora_rank: int, capacity: int) -> None:
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.capacity = capacity
        self.loras: dict[int, LoRARequest] = {}  # insertion order = LRU order
        self.loaded_tensors: dict[int, dict[str, Any]] = {}
        self.added: list[LoRARequest] = []
        self.removed: list[int] = []
        self.evicted: list[int] = []

    def add_lora(self, lora_request: LoRARequest) -> bool:
        if not self.enable_lora:
            raise ValueError("LoRA is not enabled. Use --enable-lora to enable LoRA.")
        self.added.append(lora_request)
        lora_id = lora_request.lora_int_id
        if lora_id in self.loras:  # already cached: just touch it
            self.loras[lora_id] = self.loras.pop(lora_id)
            return True
        tensors = self._read_adapter(Path(lora_request.lora_path))  # load first, then evict
        if len(self.loras) + 1 > self.capacity:
            oldest = next(iter(self.loras))
            del self.loras[oldest]
            self.evicted.append(oldest)
        self.loras[lora_id] = lora_request
        self.loaded_tensors[lora_id] = tensors
        return True

    def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return self.loras.pop(lora_id, None) is not None

    def list_loras(self) -> set[int]:
        return set(self.loras)

    def _read_adapter(self, folder: Path) -> dict[str, Any]:
        config = json.loads((folder / "adapter_config.json").read_text())
        if config["r"] > self.max_lora_rank:
            raise ValueError(f"LoRA rank {config['r']} is greater than max_lora_rank {self.max_lora_rank}.")
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


class LLM:
    def __init__(
        self,
        model: str,
        *,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        hf_token: bool | str | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - ENGINE_ARGS_FIELDS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {min(unknown)!r}")
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {MODEL_DTYPES}")
        max_lora_rank = kwargs.get("max_lora_rank", 16)
        if max_lora_rank not in MAX_LORA_RANKS:
            raise ValueError(f"max_lora_rank {max_lora_rank} is not one of {MAX_LORA_RANKS}")
        if kwargs.get("logprobs_mode", "raw_logprobs") not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode {kwargs['logprobs_mode']!r} is not one of {LOGPROBS_MODES}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        backend = kwargs.get("distributed_executor_backend")
        if backend is not None and backend not in EXECUTOR_BACKENDS:
            raise ValueError(f"distributed_executor_backend {backend!r} is not one of {EXECUTOR_BACKENDS}")
        # EngineArgs.create_engine_config reads the caller's placement group when it runs in a Ray actor and
        # hands it to the engine-core process; this fake stays in the caller's process.
        self.workers = ray_executor_workers(tensor_parallel_size) if backend == "ray" else []
        self.init_kwargs: dict[str, Any] = dict(
            model=model, trust_remote_code=trust_remote_code, tensor_parallel_size=tensor_parallel_size,
            dtype=dtype, revision=revision, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
            hf_token=hf_token, **kwargs)
        max_loras = kwargs.get("max_loras", 1)
        self.llm_engine = LLMEngine(kwargs.get("enable_lora", False), max_lora_rank,
                                    capacity=kwargs.get("max_cpu_loras") or max_loras)
        self.generate_calls: list[dict[str, Any]] = []

    def generate(
        self,
        prompts: str | Sequence[str],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Sequence[LoRARequest] | LoRARequest | None = None,
        priority: int | Sequence[int] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError("the fake takes one SamplingParams for all prompts")
        if isinstance(lora_request, Sequence):
            raise TypeError("the fake takes one LoRARequest for all prompts")
        self.generate_calls.append({"prompts": prompts, "sampling_params": params, "use_tqdm": use_tqdm,
                                        "lora_request": lora_request})
        if lora_request is not None:
            self.llm_engine.add_lora(lora_request)  # vLLM loads an adapter it does not hold on first use
        lora_id = lora_request.lora_int_id if lora_request is not None else 0
        max_tokens = params.max_tokens or 16
        outputs = []
        for i, prompt in enumerate(prompts):
            samples = []
            for j in range(params.n):
                token_ids, reason = fake_sample(i, j, lora_id, max_tokens)
                logprobs = None if params.logprobs is None else [self._position(t, params.logprobs) for t in token_ids]
                samples.append(CompletionOutput(
                    index=j, text=fake_text(token_ids), token_ids=token_ids,
                    cumulative_logprob=sum(fake_logprob(t) for t in token_ids) if logprobs else None,
                    logprobs=logprobs, finish_reason=reason, lora_request=lora_request))
            outputs.append(RequestOutput(request_id=str(i), prompt=prompt, prompt_token_ids=[1, 2, 3],
                                         prompt_logprobs=None, outputs=samples, finished=True,
                                         lora_request=lora_request))
        return outputs

    @staticmethod
    def _position(token_id: int, top: int) -> dict[int, Logprob]:
        # Like vLLM's gather_logprobs: the top `top` tokens plus the sampled one. The decoys come first so
        # reading "the first entry" instead of the sampled token's id gives a wrong answer.
        position = {90000 + r: Logprob(logprob=-0.01 * r, rank=r, decoded_token="?") for r in range(1, top + 1)}
        position[token_id] = Logprob(logprob=fake_logprob(token_id), rank=top + 1, decoded_token=f"<{token_id}>")
        return position
