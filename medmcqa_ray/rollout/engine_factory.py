"""Building a rollout engine by name. Each engine module is imported only when asked for, so the hf engine
never needs vLLM (and engine.py, the interface both subclass, imports neither)."""

from __future__ import annotations

from typing import Any

from medmcqa_ray.rollout.engine import RolloutEngine


def make_engine(engine: str, **kwargs: Any) -> RolloutEngine:
    """`engine` is concrete here (`hf` or `vllm`): the config resolves `auto` when it loads."""
    if engine == "hf":
        from medmcqa_ray.rollout.hf_engine import HFEngine

        return HFEngine(**kwargs)
    if engine == "vllm":
        from medmcqa_ray.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    raise ValueError(f"rollout.engine: unknown engine {engine!r}")
