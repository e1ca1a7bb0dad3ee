"""Learners on Ray Train: LoRA SFT (and GRPO, next)."""
