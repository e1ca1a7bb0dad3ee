"""What crosses the rollout actor boundary: sampling settings, completions, adapter updates. Defined once."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class Sampling(BaseModel):
    """Sampling settings for one generate call. temperature 0 means greedy."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1)
    """Samples per prompt."""
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    """0 turns top-k off."""
    max_new_tokens: int = Field(256, ge=1)
    seed: Optional[int] = None
    """Fixes the samples for a given prompt batch (per call)."""
    tempered_logprobs: bool = False
    """Logprobs of logits / temperature, the policy TRL's GRPO learner computes, instead of the raw logits."""


class Completion(BaseModel):
    """One sampled completion. `logprobs[i]` is the log-probability of `token_ids[i]` under the policy
    that sampled it, from the raw (unprocessed) logits: top-p/top-k do not change it, nor does temperature
    unless `Sampling.tempered_logprobs` (logits / temperature, hf engine only) asked for it. So the learner
    can compare it with its own logprobs of the same tokens."""

    model_config = ConfigDict(extra="forbid")

    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    policy_version: int


class AdapterUpdate(BaseModel):
    """A LoRA adapter version. The tensors travel separately, through the object store."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    version: int = Field(ge=0)
    peft_config: dict[str, Any]
    """The adapter's PEFT LoraConfig as a dict (what adapter_config.json holds)."""


class EngineHealth(BaseModel):
    """What an engine says of itself (`RolloutEngine.health`): the fields past `device` are its kind's own."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    """The engine's class: HFEngine, VLLMEngine."""
    policy_version: int
    """The adapter version it generates with; -1 for the base model."""
    device: str
    adapter: Optional[bool] = None
    """hf: whether an adapter is applied."""
    lora_id: Optional[int] = None
    """vllm: the LoRA id vLLM holds the adapter under (a new one per version)."""
    sleep_state: Optional[str] = None
    """vllm: awake or asleep (colocated with a learner on one GPU)."""
    staged: Optional[bool] = None
    """vllm: an adapter received and not yet applied (it is, at the next generate)."""
    kv_cache_tokens: Optional[int] = None
    """vllm: the KV cache's size in tokens, as the engine core reported its blocks."""


class ActorHealth(EngineHealth):
    """`RolloutActor.health()`: its engine's health and where the actor runs; the GRPO manifest keeps one per
    actor, as the last learner saw them."""

    pid: int
    node_id: str
    actor_id: str
    completions: int
    """Completions this actor generated since it (re)started."""
