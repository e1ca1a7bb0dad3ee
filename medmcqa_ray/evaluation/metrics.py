"""Accuracy with a Wilson 95% interval, per-subject accuracy, and an exact McNemar test between heads."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from medmcqa_ray.config import Scoring


def wilson_ci(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval: honest at small n and near 0 or 1, where the normal interval is not."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test_p(up: int, down: int) -> float:
    """Exact two-sided sign test: `up` changes one way against `down` the other, under a fair coin."""
    n = up + down
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(up, down) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar_p(base: list[bool], head: list[bool]) -> float:
    """Exact two-sided McNemar test on paired outcomes (same questions, two heads): the sign test on the
    questions only one of them got right."""
    return sign_test_p(sum(1 for x, y in zip(base, head) if y and not x),
                       sum(1 for x, y in zip(base, head) if x and not y))


SCORINGS = {Scoring.GENERATE: ("correct", "extracted"), Scoring.LOGLIK: ("loglik_correct", "loglik_choice")}
"""Per scoring, the record fields holding its verdict and its chosen letter (null where not scored)."""


def summarise(records: list[dict], scoring: Scoring) -> dict:
    """One head's summary under one scoring, over the records that scoring reached."""
    correct_key, choice_key = SCORINGS[scoring]
    scored = [r for r in records if r.get(correct_key) is not None]
    n = len(scored)
    correct = sum(r[correct_key] for r in scored)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for r in scored:
        by_subject[r["subject"] or "Unknown"].append(r[correct_key])
    choices = Counter(r[choice_key] for r in scored if r[choice_key])
    summary = {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": list(wilson_ci(correct, n)),
        "choices": dict(sorted(choices.items())),
        "top_choice_share": max(choices.values()) / n if choices else 0.0,
        "per_subject": {s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(by_subject.items())},
    }
    if scoring == Scoring.GENERATE:
        summary["format_compliance"] = sum(r["compliant"] for r in scored) / n if n else 0.0
        summary["extracted"] = sum(r["extracted"] is not None for r in scored) / n if n else 0.0
    return summary


def paired_p(a: dict[str, bool], b: dict[str, bool]) -> tuple[float, int]:
    """McNemar's p between two sets of verdicts keyed by question id, on the questions both have."""
    ids = [i for i in a if i in b]
    return mcnemar_p([a[i] for i in ids], [b[i] for i in ids]), len(ids)
