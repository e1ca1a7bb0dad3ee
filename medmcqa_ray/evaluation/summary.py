"""The eval folder's summary of every head scored so far (heads/<head>.jsonl): summary.json, the combined
eval_results.jsonl and accuracy.png. A head scored earlier (base, by `baseline`) stays beside those
scored now, and each adapter head is compared with base on the questions both answered."""

from __future__ import annotations

import json
from pathlib import Path

from medmcqa_ray.evaluation.heads import HEADS
from medmcqa_ray.evaluation.metrics import mcnemar_p, summarise
from medmcqa_ray.evaluation.report import accuracy_plot


def _read_head(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_summary(out: Path, dataset: str) -> dict:
    results = {p.stem: _read_head(p) for p in sorted((out / "heads").glob("*.jsonl"), key=lambda p: HEADS.index(p.stem))}
    summary: dict = {"dataset": dataset, "heads": {}}
    base = {r["id"]: r["correct"] for r in results.get("base", [])}
    for head, records in results.items():
        s = summarise(records)
        paired = [(base[r["id"]], r["correct"]) for r in records if r["id"] in base]
        if head != "base" and paired:
            s["p_vs_base"] = mcnemar_p([b for b, _ in paired], [h for _, h in paired])
            s["paired_n"] = len(paired)
        summary["heads"][head] = s
    with (out / "eval_results.jsonl").open("w") as f:
        for head, records in results.items():
            for r in records:
                f.write(json.dumps({"head": head} | r, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accuracy_plot(summary, out / "accuracy.png")
    return summary
