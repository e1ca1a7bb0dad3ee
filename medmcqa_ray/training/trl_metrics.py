"""TRL's buffer of the current logging window (`GRPOTrainer._metrics["train"]`: name -> values, averaged by
TRL into each logged step): the one place that reaches into the private attribute, so a TRL release that
moves it breaks here, by name, and nowhere else. The rollout function, the callbacks and our trainer
subclass append to it."""

from __future__ import annotations

from typing import Any


def step_buffer(trainer: Any) -> dict[str, list[float]]:
    """Where a value appended under a metric name (metric_names.py) reaches the step TRL logs next."""
    return trainer._metrics["train"]
