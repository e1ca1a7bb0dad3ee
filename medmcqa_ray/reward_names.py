"""The built-in reward components' names, and their order: the one definition that the config (which weights
they take), the registry (TRL's reward functions and weights, in this order), the scorer and dynamic sampling
(which groups `correct` leaves flat) import. A leaf: it imports nothing."""

FORMAT_EXACT = "format_exact"
FORMAT_APPROX = "format_approx"
CORRECT = "correct"
SIMILARITY = "similarity"
"""Scored a batch at a time (it embeds every reasoning of the batch together); the others one completion at a time."""
CONSISTENT = "consistent"

BUILTIN_REWARDS = (FORMAT_EXACT, FORMAT_APPROX, CORRECT, SIMILARITY, CONSISTENT)
"""In the order TRL gets them; `rewards.custom` components follow, in config order."""
