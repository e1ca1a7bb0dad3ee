"""Learners on Ray Train: the sft and grpo stages, and the parts their learners share."""
