"""Per-question predictions of every head as one table (columns of equal length): what MLflow shows as
the eval run's `eval/predictions.json` table, and `predictions.json` beside the summary."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

COLUMNS = ("head", "id", "subject", "question", "gold", "generate_prediction", "generate_correct", "format_ok",
           "loglik_prediction", "loglik_correct")


def predictions_table(rows: pa.Table, results: dict[str, list[dict[str, Any]]]) -> dict[str, list]:
    """One row per (head, question); a scoring a row did not get (generate_limit) is None in its columns."""
    questions = dict(zip(rows["id"].to_pylist(), rows["question"].to_pylist())) if "question" in rows.column_names else {}
    table: dict[str, list] = {c: [] for c in COLUMNS}
    for head, records in results.items():
        for r in records:
            generated = r.get("generation") is not None
            row = {"head": head, "id": r["id"], "subject": r.get("subject"), "question": questions.get(r["id"]),
                   "gold": r["gold"], "generate_prediction": r.get("extracted") if generated else None,
                   "generate_correct": r.get("correct") if generated else None,
                   "format_ok": r.get("compliant") if generated else None,
                   "loglik_prediction": r.get("loglik_choice"), "loglik_correct": r.get("loglik_correct")}
            for c in COLUMNS:
                table[c].append(row[c])
    return table
