"""What an accuracy was measured on: the split, the exact questions (a hash of their ids), the scoring and
the generation budget. Two accuracies compare only when their evaluation sets are equal: a 12-question 100%
says nothing against a 4,183-question 55%. The registry's `best` alias ranks within one set
(tracking/store.py:move_best)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray.config import Config, Scoring
from medmcqa_ray.evaluation.metrics import SCORINGS


class EvalSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    split: str
    """The evaluated split, or `file:<name>` for rows given as eval.input."""
    n: int
    ids_sha: str
    """sha256 of the scored questions' ids, sorted (12 hex digits)."""
    scoring: Scoring
    max_new_tokens: Optional[int] = None
    """Generation's budget (None for log-likelihood, which generates nothing)."""

    @property
    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def describe(self) -> str:
        budget = f" ({self.max_new_tokens} new tokens)" if self.max_new_tokens else ""
        return f"{self.split}, {self.n} questions (ids {self.ids_sha}), {self.scoring}{budget}"


def eval_set(cfg: Config, out_dir: Path, head: str, scoring: Scoring) -> EvalSet:
    """The set `head` was scored on under `scoring`, from its per-question records (heads/<head>.jsonl)."""
    correct_key = SCORINGS[scoring][0]
    lines = (Path(out_dir) / "heads" / f"{head}.jsonl").read_text().splitlines()
    ids = sorted(r["id"] for r in map(json.loads, lines) if r.get(correct_key) is not None)
    return EvalSet(split=f"file:{Path(cfg.eval.input).name}" if cfg.eval.input else cfg.eval.split, n=len(ids),
                   ids_sha=hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12], scoring=scoring,
                   max_new_tokens=cfg.eval.max_new_tokens if scoring == Scoring.GENERATE else None)
