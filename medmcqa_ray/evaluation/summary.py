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

from medmcqa_ray.evaluation.heads import HEADS
from medmcqa_ray.evaluation.metrics import SCORINGS, paired_p, summarise, wilson_ci
from medmcqa_ray.evaluation.report import accuracy_plot
from medmcqa_ray.evaluation.scores import EvalSummary, Floors
from medmcqa_ray.formatting import LETTERS

SUMMARY_FILE = "summary.json"


def read_summary(out: Path) -> Optional[EvalSummary]:
    """The eval folder's summary, None when no head has been evaluated there yet."""
    path = Path(out) / SUMMARY_FILE
    return EvalSummary.model_validate_json(path.read_text()) if path.is_file() else None


def _read_head(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def floors(gold: dict[str, str], majority_letter: Optional[str], letter_source: str) -> Floors:
    """The two floors on these questions: a uniform guess over the options, and always answering
    `majority_letter` (the train split's most frequent; `letter_source` says where it came from)."""
    n = len(gold)
    hits = sum(g == majority_letter for g in gold.values())
    return Floors.model_validate(
        {"uniform": 1 / len(LETTERS),
         "majority_letter": {"letter": majority_letter, "source": letter_source, "n": n, "correct": hits,
                             "accuracy": hits / n if n else 0.0, "ci95": list(wilson_ci(hits, n))}})


def build_summary(out: Path, dataset: str, majority_letter: Optional[str], letter_source: str) -> EvalSummary:
    results = {p.stem: _read_head(p) for p in sorted((out / "heads").glob("*.jsonl"), key=lambda p: HEADS.index(p.stem))}
    gold = {r["id"]: r["gold"] for records in results.values() for r in records}
    heads: dict[str, dict[str, dict]] = {}
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
            heads.setdefault(head, {})[scoring] = s
    with (out / "eval_results.jsonl").open("w") as f:
        for head, records in results.items():
            for r in records:
                f.write(json.dumps({"head": head} | r, ensure_ascii=False) + "\n")
    # The heads validated from plain dicts, so that only the fields each has count as set (EvalSummary.write).
    summary = EvalSummary.model_validate({"dataset": dataset, "heads": heads,
                                          "floors": floors(gold, majority_letter, letter_source)})
    summary.write(out / SUMMARY_FILE)
    accuracy_plot(summary, out / "accuracy.png")
    return summary
