"""A fake `vllm` 0.33.0: only what medmcqa_ray/rollout/vllm_engine.py uses, with the real names, keyword
names, defaults and return shapes, so the engine's calls are checked without a GPU.

Checked against the vllm-0.33.0 wheel from PyPI (_version.py: 0.33.0, commit g4ba787ec9):
- vllm/entrypoints/llm.py       177-228  LLM.__init__(model, *, ..., **kwargs -> EngineArgs)
                                417-480  LLM.generate(prompts, sampling_params, *, use_tqdm, lora_request, ...)
                                         (LLM itself has no add/remove LoRA method in 0.33)
- vllm/v1/engine/llm_engine.py  471-481  LLMEngine.add_lora(LoRARequest) -> bool, remove_lora(int) -> bool,
                                         list_loras() -> set[int]
- vllm/engine/arg_utils.py      506-699  EngineArgs fields: max_model_len 520, logprobs_mode 627,
                                         enable_lora 694, max_lora_rank 696
- vllm/config/lora.py           27       MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
- vllm/config/model.py          101-103, 291-299  LogprobsMode; logprobs_mode default "raw_logprobs"
                                         (raw = before temperature/top-k/top-p and logits processors)
- vllm/v1/sample/sampler.py     141-200, 370-420  raw logprobs taken before sampling; gather_logprobs
                                         returns the sampled token plus the top `logprobs` tokens
- vllm/sampling_params.py       271-350  SamplingParams fields (top_k 318: "0 (or -1)" = all tokens;
                                         logprobs 342), 676-684 top_k validation ("prefer 0")
- vllm/lora/request.py          8-69     LoRARequest(lora_name, lora_int_id, lora_path="", ...), id > 0,
                                         equality and hash by lora_name
- vllm/outputs.py               59-113   CompletionOutput, 137-209 RequestOutput.__init__
- vllm/logprobs.py              13-25    Logprob(logprob, rank=None, decoded_token=None); 162 SampleLogprobs
                                         = list[dict[int, Logprob]] (FlatLogprobs only if flat_logprobs=True)
- vllm/v1/engine/__init__.py    37       FINISH_REASON_STRINGS = stop, length, abort, error, repetition
- vllm/lora/worker_manager.py   288-320  a new adapter is loaded before the LRU cache evicts the oldest
- vllm/v1/executor/ray_utils.py initialize_ray_cluster, _verify_bundles: with the Ray executor, the
                                         caller's placement group is used (one GPU per bundle at most, >= tp
                                         GPU bundles, the caller's node in it), else a PACK group is made;
                                         workers: num_cpus=0, one GPU, one per GPU bundle
"""

from vllm.entrypoints.llm import LLM
from vllm.sampling_params import SamplingParams

__version__ = "0.33.0"
__all__ = ["LLM", "SamplingParams"]
