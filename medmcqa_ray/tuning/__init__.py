"""The sweep stage: Ray Tune over reward weights, each trial a GRPO run on Ray Train (stage.py); the
Tune side, imported only when a sweep runs (tuner.py); reward weights as a config and as an overlay
(weights.py)."""

from medmcqa_ray.tuning.stage import STAGE, SweepManifest

__all__ = ["STAGE", "SweepManifest"]
