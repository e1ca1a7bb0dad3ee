"""Stand-in vllm.inputs.TokensPrompt (real: vllm/inputs/llm.py, a TypedDict; only the key the engine sets)."""

from __future__ import annotations

from typing import TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
