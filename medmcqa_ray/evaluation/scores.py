"""What summary.json holds (DESIGN.md fixes its shape): every head's figures under each scoring, and the two
floors beside them. summary.py builds it, report.py draws it, the eval manifest carries it, the model card
quotes it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Scoring


class SubjectScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int
    accuracy: float


class HeadScore(BaseModel):
    """One head under one scoring (metrics.summarise, then the paired tests against the earlier heads and
    the majority-letter floor, each on the questions both answered)."""

    model_config = ConfigDict(extra="forbid")

    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    """Wilson's 95% interval."""
    choices: dict[str, int]
    """Letter -> how often it was chosen."""
    top_choice_share: float
    per_subject: dict[str, SubjectScore]
    format_compliance: Optional[float] = None
    """generate only, as `extracted`."""
    extracted: Optional[float] = None
    p_vs_base: Optional[float] = None
    """McNemar's p against the base head; set for the later heads only, as are the rest."""
    paired_n_vs_base: Optional[int] = None
    p_vs_sft: Optional[float] = None
    paired_n_vs_sft: Optional[int] = None
    p_vs_majority: Optional[float] = None


class MajorityFloor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    letter: Optional[str]
    """The train split's most frequent answer letter; None where no train split was read."""
    source: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]


class Floors(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uniform: float
    majority_letter: MajorityFloor


class EvalSummary(BaseModel):
    """summary.json: what the eval folder says of every head scored so far."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    floors: Floors
    heads: dict[str, dict[Scoring, HeadScore]]
    """head -> scoring -> its figures."""

    def write(self, path: Path) -> None:
        # Only the fields a head has: a loglik score carries no format_compliance, base no p_vs_base.
        path.write_text(self.model_dump_json(indent=2, exclude_unset=True) + "\n")
