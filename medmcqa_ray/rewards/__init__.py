"""Reward components (pure functions), the similarity scorer, custom components, and the reward actors."""
