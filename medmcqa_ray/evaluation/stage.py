"""The baseline and eval stages: each scores heads on the labelled rows of eval.input (default: this
pipeline's formatted eval.split). `baseline` scores the base model alone, whatever eval.heads says;
`eval` scores the heads eval.heads names, dropping an adapter head whose default adapter is not there yet.

Writes under eval/ (or eval.out_dir): heads/<head>.jsonl (per example), then summary.py's summary.json,
eval_results.jsonl and accuracy.png; the manifest's table is report.table of that summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import pyarrow as pa

from medmcqa_ray.config import Config
from medmcqa_ray.data.formatted_rows import read_formatted
from medmcqa_ray.evaluation.heads import HEADS, evaluate_head, head_adapters
from medmcqa_ray.evaluation.report import table
from medmcqa_ray.evaluation.summary import build_summary
from medmcqa_ray.layout import layout
from medmcqa_ray.stage import Manifest, Stage, fingerprint, hash_parts, upstream_key

log = logging.getLogger(__name__)
ARTIFACTS = ("summary.json", "accuracy.png", "eval_results.jsonl")


class EvalManifest(Manifest):
    # "eval" for baseline too: both hold the same summary, and MLflow gets the same metrics from it.
    stage: Literal["eval"] = "eval"
    heads: list[str]
    adapters: dict[str, Optional[str]]
    rows: int
    summary: dict[str, Any]
    out_dir: Optional[str] = None
    """The folder the eval files were written to (eval.out_dir, default output_dir/eval)."""

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for head, s in self.summary["heads"].items():
            metrics |= {f"eval/{head}/accuracy": s["accuracy"], f"eval/{head}/ci95_low": s["ci95"][0],
                        f"eval/{head}/ci95_high": s["ci95"][1], f"eval/{head}/format_compliance": s["format_compliance"],
                        f"eval/{head}/n": s["n"]}
        return metrics

    def artifacts(self) -> list[tuple[Path, str]]:
        return [(Path(self.out_dir) / name, "eval") for name in ARTIFACTS] if self.out_dir else []

    def table(self) -> str:
        return table(self.summary)


def load_eval_rows(cfg: Config) -> pa.Table:
    """The labelled rows of eval.input, in file order, cut to eval.limit."""
    return read_formatted(layout(cfg).eval_input, limit=cfg.eval.limit, purpose="evaluate")


def run_eval(cfg: Config, heads: list[str]) -> EvalManifest:
    adapters = head_adapters(cfg, heads)  # a configured adapter that is not there fails before any work
    rows = load_eval_rows(cfg)
    out = layout(cfg).eval_dir
    (out / "heads").mkdir(parents=True, exist_ok=True)
    for head, adapter in adapters.items():
        log.info("eval: %s head on %d rows%s", head, rows.num_rows, f" (adapter {adapter})" if adapter else "")
        records = evaluate_head(cfg, rows, adapter, head)
        tmp = out / "heads" / f"{head}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        tmp.rename(out / "heads" / f"{head}.jsonl")
    summary = build_summary(out, str(layout(cfg).eval_input))
    return EvalManifest(heads=list(adapters), adapters=adapters, rows=rows.num_rows, summary=summary, out_dir=str(out))


class EvalStage(Stage):
    name: ClassVar[str] = "eval"
    manifest_type = EvalManifest
    manifest_file: ClassVar[str] = "manifest.json"
    key_heads: ClassVar[tuple[str, ...]] = HEADS
    """The heads whose adapters the cache key watches (eval.heads itself is in the eval section's hash)."""

    def heads(self, cfg: Config) -> list[str]:
        return [h for h in HEADS if h in cfg.eval.heads]

    def inputs(self, cfg: Config) -> list[Path]:
        paths = layout(cfg)
        return [paths.eval_input, *(paths.adapter(h) for h in self.key_heads if h != "base")]

    def output(self, cfg: Config) -> Path:
        return layout(cfg).eval_dir

    def manifest_path(self, cfg: Config) -> Path:
        return layout(cfg).eval_dir / self.manifest_file

    def cache_key(self, cfg: Config) -> str:
        paths = layout(cfg)
        src = paths.eval_input
        adapters = [fingerprint(paths.adapter(h)) for h in self.key_heads if h != "base"]
        return hash_parts(cfg.section_hash("model", "format", "eval", "adapters"), cfg.rollout.engine,
                          ",".join(self.key_heads), upstream_key(paths.formatted_manifest), str(src), fingerprint(src),
                          *adapters)

    def run(self, cfg: Config) -> EvalManifest:
        return run_eval(cfg, self.heads(cfg))


class BaselineStage(EvalStage):
    name: ClassVar[str] = "baseline"
    manifest_file: ClassVar[str] = "baseline_manifest.json"
    key_heads: ClassVar[tuple[str, ...]] = ("base",)

    def heads(self, cfg: Config) -> list[str]:
        return ["base"]


BASELINE = BaselineStage()
EVAL = EvalStage()
