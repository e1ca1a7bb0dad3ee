"""What a sweep keeps of each trial (tuner.trial_record writes them; the sweep manifest and results.json hold
them). A module of its own so that reading a sweep's manifest does not import Ray Tune."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict


class TrialRun(BaseModel):
    """A trial's MLflow run, as its folder keeps it (RunRef less the tracking URI, which may hold credentials)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    name: str
    parent: Optional[str] = None


class TrialRecord(BaseModel):
    """One trial of a sweep, finished, stopped early or failed: the sweep manifest's rows and results.json."""

    model_config = ConfigDict(extra="forbid")

    trial_id: str
    weights: dict[str, float]
    """The reward weights this trial searched (sweep.space's keys)."""
    mlflow_run: Optional[TrialRun]
    status: Literal["completed", "early_stopped", "error"]
    last_step: int
    selection_accuracy: Optional[float]
    correct: Optional[float]
    error: Optional[str]
    curves: dict[str, list[tuple[int, float]]]
    """Metric -> (step, value) points; selection_accuracy only at the steps it was scored."""
