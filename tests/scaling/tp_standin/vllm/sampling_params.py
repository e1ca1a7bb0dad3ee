"""Stand-in vllm.sampling_params.SamplingParams: the fields the engine sets, with the real defaults (the
real one is a msgspec.Struct with many more; the engine's values are validated by the real vLLM's tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
