"""The baseline and eval stages: each scores heads on the labelled rows of eval.input (default: this
pipeline's formatted eval.split). `baseline` scores the base model alone, whatever eval.heads says;
`eval` scores the heads eval.heads names, dropping an adapter head whose default adapter is not there yet.

Writes under eval/ (or eval.out_dir): heads/<head>.jsonl (per example), then summary.py's summary.json,
eval_results.jsonl and accuracy.png; the manifest's table is report.table of that summary.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Optional, Sequence

import pyarrow as pa

from medmcqa_ray.adapters import adapter_checksum, read_adapter
from medmcqa_ray.config import Config, Scoring
from medmcqa_ray.data.formatted_rows import read_formatted
from medmcqa_ray.errors import StageError
from medmcqa_ray.evaluation.eval_set import eval_set
from medmcqa_ray.evaluation.heads import HEADS, evaluate_heads, head_adapters
from medmcqa_ray.evaluation.predictions import predictions_table
from medmcqa_ray.evaluation.report import table
from medmcqa_ray.evaluation.scores import EvalSummary
from medmcqa_ray.evaluation.summary import build_summary
from medmcqa_ray.layout import Head, layout
from medmcqa_ray.stage import Manifest, Stage, fingerprint, hash_parts, upstream_key

if TYPE_CHECKING:
    from medmcqa_ray.tracking import Tracker

log = logging.getLogger(__name__)
ARTIFACTS = ("summary.json", "accuracy.png", "eval_results.jsonl")
PREDICTIONS = "predictions.json"


class EvalManifest(Manifest):
    # "eval" for baseline too: both hold the same summary, and MLflow gets the same metrics from it.
    stage: Literal["eval"] = "eval"
    heads: list[str]
    adapters: dict[str, Optional[str]]
    rows: int
    unlabelled: int = 0
    """Rows of eval.input without an answer (the test split's, say): counted here, never scored."""
    summary: EvalSummary
    out_dir: Optional[str] = None
    """The folder the eval files were written to (eval.out_dir, default output_dir/eval)."""

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for head, scorings in self.summary.heads.items():
            for scoring, s in scorings.items():
                key = f"eval/{head}/{scoring}"
                metrics |= {f"{key}/accuracy": s.accuracy, f"{key}/ci95_low": s.ci95[0],
                            f"{key}/ci95_high": s.ci95[1], f"{key}/n": s.n,
                            f"{key}/top_choice_share": s.top_choice_share}
                optional = {"format_compliance": s.format_compliance, "p_vs_base": s.p_vs_base,
                            "p_vs_sft": s.p_vs_sft, "p_vs_majority": s.p_vs_majority}
                metrics |= {f"{key}/{name}": value for name, value in optional.items() if value is not None}
        floors = self.summary.floors
        return metrics | {"eval/floor/uniform": floors.uniform,
                          "eval/floor/majority_letter": floors.majority_letter.accuracy}

    def artifacts(self) -> list[tuple[Path, str]]:
        return [(Path(self.out_dir) / name, "eval") for name in ARTIFACTS] if self.out_dir else []

    def table(self) -> str:
        note = f"\n{self.unlabelled} rows without an answer were not scored" if self.unlabelled else ""
        return table(self.summary) + note


def load_eval_rows(cfg: Config, unlabelled: Optional[list[str]] = None) -> pa.Table:
    """The labelled rows of eval.input, in file order, cut to eval.limit; the ids of rows without an
    answer go to `unlabelled` (counted, never scored as wrong)."""
    rows = read_formatted(layout(cfg).eval_input, limit=cfg.eval.limit, purpose="evaluate", unlabelled=unlabelled)
    if cfg.eval.scoring != Scoring.GENERATE and "question" not in rows.column_names:
        raise StageError(f"{layout(cfg).eval_input} has no `question` column, which eval.scoring={cfg.eval.scoring} "
                         "needs for lm-eval's prompt: re-run prep (formatted rows carry it since this version), "
                         "or set eval.scoring=generate")
    return rows


def majority_letter(cfg: Config, rows: pa.Table) -> tuple[Optional[str], str]:
    """The train split's most frequent answer letter (the floor a model reaches by always giving it), or,
    when this pipeline has no formatted train split, the evaluated rows' own."""
    train = layout(cfg).formatted("train")
    if train.is_dir() and any(train.glob("*.parquet")):
        labels, source = read_formatted(train, columns=["answer_label"])["answer_label"].to_pylist(), "train's most frequent"
    else:
        labels, source = rows["answer_label"].to_pylist(), "these rows' most frequent"
    counts = Counter(labels)
    return (max(sorted(counts), key=counts.__getitem__) if counts else None), source


def run_eval(cfg: Config, heads: Sequence[Head]) -> EvalManifest:
    adapters = head_adapters(cfg, heads)  # a configured adapter that is not there fails before any work
    unlabelled: list[str] = []
    rows = load_eval_rows(cfg, unlabelled)
    if unlabelled:
        log.info("eval: %d rows of %s have no answer and are not scored (e.g. %s)", len(unlabelled),
                 layout(cfg).eval_input, unlabelled[0])
    out = layout(cfg).eval_dir
    (out / "heads").mkdir(parents=True, exist_ok=True)
    for head, adapter in adapters.items():
        log.info("eval: %s head on %d rows%s", head, rows.num_rows, f" (adapter {adapter})" if adapter else "")
    results = evaluate_heads(cfg, rows, adapters)
    for head, records in results.items():
        tmp = out / "heads" / f"{head}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        tmp.rename(out / "heads" / f"{head}.jsonl")
    (out / PREDICTIONS).write_text(json.dumps(predictions_table(rows, results), ensure_ascii=False))
    summary = build_summary(out, str(layout(cfg).eval_input), *majority_letter(cfg, rows))
    return EvalManifest(heads=list(adapters), adapters=adapters, rows=rows.num_rows, unlabelled=len(unlabelled),
                        summary=summary, out_dir=str(out))


class EvalStage(Stage[EvalManifest]):
    name: ClassVar[str] = "eval"
    manifest_type = EvalManifest
    manifest_file: ClassVar[str] = "manifest.json"
    key_heads: ClassVar[tuple[Head, ...]] = HEADS
    """The heads whose adapters the cache key watches (eval.heads itself is in the eval section's hash)."""

    def heads(self, cfg: Config) -> list[Head]:
        return [h for h in HEADS if h in cfg.eval.heads]

    def inputs(self, cfg: Config) -> list[Path]:
        paths = layout(cfg)
        return [paths.eval_input, *(paths.adapter(h) for h in self.key_heads if h != "base")]

    def output(self, cfg: Config) -> Path:
        return layout(cfg).eval_dir

    def manifest_path(self, cfg: Config) -> Path:
        return layout(cfg).eval_manifest(self.manifest_file)

    def cache_key(self, cfg: Config) -> str:
        paths = layout(cfg)
        src = paths.eval_input
        adapters = [fingerprint(paths.adapter(h)) for h in self.key_heads if h != "base"]
        return hash_parts(cfg.section_hash("model", "format", "eval", "adapters"), cfg.rollout.engine,
                          ",".join(self.key_heads), upstream_key(paths.formatted_manifest), str(src), fingerprint(src),
                          *adapters)

    def run(self, cfg: Config) -> EvalManifest:
        return run_eval(cfg, self.heads(cfg))

    def record(self, tracker: "Tracker", manifest: EvalManifest) -> None:
        """The default record, the per-question predictions as an MLflow table, and each adapter head's
        accuracy on its registered version, moving alias `best` (generation's accuracy where scored)."""
        super().record(tracker, manifest)
        if not (tracker.enabled and manifest.out_dir and (Path(manifest.out_dir) / PREDICTIONS).is_file()):
            return
        tracker.log_table(json.loads((Path(manifest.out_dir) / PREDICTIONS).read_text()), "eval/predictions.json")
        for head, folder in manifest.adapters.items():
            scorings = manifest.summary.heads.get(head, {})
            scoring = Scoring.GENERATE if Scoring.GENERATE in scorings else Scoring.LOGLIK
            if folder and scoring in scorings:
                sha = adapter_checksum(read_adapter(Path(folder))[1])
                scored = eval_set(tracker.cfg, Path(manifest.out_dir), head, scoring)
                tracker.move_best(head, sha, scored, scorings[scoring].accuracy, list(scorings[scoring].ci95))


class BaselineStage(EvalStage):
    name: ClassVar[str] = "baseline"
    manifest_file: ClassVar[str] = "baseline_manifest.json"
    key_heads: ClassVar[tuple[Head, ...]] = ("base",)

    def heads(self, cfg: Config) -> list[Head]:
        return ["base"]


BASELINE = BaselineStage()
EVAL = EvalStage()
