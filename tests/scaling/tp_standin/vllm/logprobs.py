"""Stand-in vllm.logprobs.Logprob (real: a dataclass with these fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None
