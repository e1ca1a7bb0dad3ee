"""Rollout engines (hf, vllm), the RolloutActor around one, and the RolloutPool over several."""
