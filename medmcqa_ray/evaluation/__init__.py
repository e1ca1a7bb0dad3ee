"""baseline and eval stages: Ray Data batch inference over rollout engines, metrics and reports."""
