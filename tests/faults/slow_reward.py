"""A custom reward component that a test can make slow on demand, so it can kill the reward actor
while a batch is being scored (the component runs inside the actor)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

SIGNALS = Path(tempfile.gettempdir()) / "medmcqa_ray_fault_reward"
ARMED, SCORING = SIGNALS / "armed", SIGNALS / "scoring"


def score(completions, **kwargs) -> list[float]:
    """0.0 for every completion; while ARMED exists, first say which process is scoring, then take 10 s."""
    if ARMED.exists():
        SCORING.write_text(str(os.getpid()))
        time.sleep(10)
    return [0.0] * len(completions)
