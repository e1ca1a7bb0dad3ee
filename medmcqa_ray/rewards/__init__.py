"""Reward components (pure functions and their registry), the similarity scorer, and the reward actors."""
