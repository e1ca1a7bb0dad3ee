"""The eval folder's summary of every head scored so far (heads/<head>.jsonl): summary.json, the combined
eval_results.jsonl and accuracy.png. A head scored earlier (base, by `baseline`) stays beside those
scored now. Per head and scoring: accuracy with its Wilson interval, the letters chosen, and McNemar's
test against base, against SFT (the GRPO head) and against the majority-letter floor, each on the
questions both answered. Two floors sit beside the heads: a uniform guess, and always answering the
letter most frequent in the train split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from medmcqa_ray.evaluation.heads import HEADS
from medmcqa_ray.evaluation.metrics import SCORINGS, paired_p, summarise, wilson_ci
from medmcqa_ray.evaluation.report import accuracy_plot
from medmcqa_ray.formatting import LETTERS

SUMMARY_FILE = "summary.json"


class ScoringSummary(BaseModel):
    """One head under one scoring, as summary.json holds it (metrics.summarise, then the paired tests)."""

    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    choices: dict[str, int]
    top_choice_share: float
    per_subject: dict[str, dict[str, float]]
    format_compliance: Optional[float] = None
    """generate only, as `extracted`."""
    extracted: Optional[float] = None
    p_vs_base: Optional[float] = None
    p_vs_sft: Optional[float] = None
    p_vs_majority: Optional[float] = None


class MajorityFloor(BaseModel):
    letter: Optional[str]
    source: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]


class Floors(BaseModel):
    uniform: float
    majority_letter: MajorityFloor


class EvalSummary(BaseModel):
    """summary.json read back (`read_summary`): what the eval folder says of every head scored so far."""

    dataset: str
    floors: Floors
    heads: dict[str, dict[str, ScoringSummary]]
    """head -> scoring (generate, loglik) -> its figures."""


def read_summary(out: Path) -> Optional[EvalSummary]:
    """The eval folder's summary, None when no head has been evaluated there yet."""
    path = Path(out) / SUMMARY_FILE
    return EvalSummary.model_validate_json(path.read_text()) if path.is_file() else None


def _read_head(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def floors(gold: dict[str, str], majority_letter: Optional[str], letter_source: str) -> dict:
    """The two floors on these questions: a uniform guess over the options, and always answering
    `majority_letter` (the train split's most frequent; `letter_source` says where it came from)."""
    n = len(gold)
    hits = sum(g == majority_letter for g in gold.values())
    return {"uniform": 1 / len(LETTERS),
            "majority_letter": {"letter": majority_letter, "source": letter_source, "n": n, "correct": hits,
                                "accuracy": hits / n if n else 0.0, "ci95": list(wilson_ci(hits, n))}}


def build_summary(out: Path, dataset: str, majority_letter: Optional[str], letter_source: str) -> dict:
    results = {p.stem: _read_head(p) for p in sorted((out / "heads").glob("*.jsonl"), key=lambda p: HEADS.index(p.stem))}
    gold = {r["id"]: r["gold"] for records in results.values() for r in records}
    summary: dict = {"dataset": dataset, "floors": floors(gold, majority_letter, letter_source), "heads": {}}
    majority = {i: g == majority_letter for i, g in gold.items()}
    for scoring, (correct_key, _) in SCORINGS.items():
        verdicts = {head: {r["id"]: r[correct_key] for r in records if r.get(correct_key) is not None}
                    for head, records in results.items()}
        for head, records in results.items():
            if not verdicts[head]:
                continue
            s = summarise(records, scoring)
            for other in ("base", "sft"):  # each later head against the earlier ones
                if verdicts.get(other) and HEADS.index(head) > HEADS.index(other):
                    s[f"p_vs_{other}"], s[f"paired_n_vs_{other}"] = paired_p(verdicts[other], verdicts[head])
            s["p_vs_majority"], _ = paired_p({i: majority[i] for i in verdicts[head]}, verdicts[head])
            summary["heads"].setdefault(head, {})[scoring] = s
    with (out / "eval_results.jsonl").open("w") as f:
        for head, records in results.items():
            for r in records:
                f.write(json.dumps({"head": head} | r, ensure_ascii=False) + "\n")
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    accuracy_plot(summary, out / "accuracy.png")
    return summary
