"""The baseline and eval stages: Ray Data batch inference (`map_batches` over an actor pool of rollout
engines, greedy) on the labelled validation rows, for each head (base, SFT adapter, GRPO adapter).

Writes under eval/ (or eval.out_dir): heads/<head>.jsonl (per example), eval_results.jsonl (all heads),
summary.json (per head: n, correct, accuracy, Wilson 95% CI, format compliance, per-subject accuracy,
McNemar p-value against base), accuracy.png, and prints a table. A head evaluated earlier (say, base
by `baseline`) is kept in the summary beside the heads evaluated now.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray

from medmcqa_ray.config import Config
from medmcqa_ray.console import bar
from medmcqa_ray.data.shards import read_shard
from medmcqa_ray.errors import StageError
from medmcqa_ray.evaluation.metrics import mcnemar_p, summarise
from medmcqa_ray.evaluation.predictor import HeadPredictor
from medmcqa_ray.evaluation.report import accuracy_plot
from medmcqa_ray.rollout import tensor_parallel

log = logging.getLogger(__name__)
HEADS = ("base", "sft", "grpo")


def eval_dir(cfg: Config) -> Path:
    return Path(cfg.eval.out_dir or Path(cfg.output_dir) / "eval")


def eval_source(cfg: Config) -> Path:
    if cfg.eval.formatted_jsonl:
        return Path(cfg.eval.formatted_jsonl)
    return Path(cfg.eval.formatted_dir or Path(cfg.output_dir) / "data" / "formatted" / cfg.eval.split)


def load_eval_rows(cfg: Config) -> pa.Table:
    """Labelled formatted rows, in file order, cut to eval.limit."""
    src = eval_source(cfg)
    if not src.exists():
        raise StageError(f"{src} does not exist: run download and prep first, or set eval.formatted_dir")
    if src.is_file():
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        table = pa.Table.from_pylist(rows) if rows else pa.table({"answer_label": pa.array([], pa.string())})
    else:
        files = sorted(src.glob("*.parquet"))
        table = pa.concat_tables([read_shard(f) for f in files]) if files else pa.table({"answer_label": pa.array([], pa.string())})
    table = table.filter(pc.is_valid(table["answer_label"]))
    if table.num_rows == 0:
        raise StageError(f"{src} has no labelled rows: nothing to evaluate (is it the test split?)")
    return table.slice(0, cfg.eval.limit) if cfg.eval.limit else table


def adapter_dir(cfg: Config, head: str) -> Path:
    """The adapter folder of an sft/grpo head: eval.<head>_adapter, else output_dir/checkpoints/<head>."""
    configured = {"sft": cfg.eval.sft_adapter, "grpo": cfg.eval.grpo_adapter}[head]
    return Path(configured) if configured is not None else Path(cfg.output_dir) / "checkpoints" / head


def head_adapters(cfg: Config, heads: list[str]) -> dict[str, Optional[str]]:
    """Adapter folder per head (None for base). A configured adapter must exist; a default one that does
    not exist yet (no SFT run) just drops that head, with a note."""
    configured = {"sft": cfg.eval.sft_adapter, "grpo": cfg.eval.grpo_adapter}
    out: dict[str, Optional[str]] = {}
    for head in heads:
        if head == "base":
            out[head] = None
            continue
        path = configured[head]
        if path is not None:
            if not (Path(path) / "adapter_config.json").is_file():
                raise StageError(f"eval.{head}_adapter: {path} is not a PEFT adapter folder (no adapter_config.json)")
            out[head] = str(path)
            continue
        default = adapter_dir(cfg, head)
        if (default / "adapter_config.json").is_file():
            out[head] = str(default)
        else:
            log.info("eval: no %s adapter at %s yet; skipping the %s head", head, default, head)
    return out


def evaluate_head(cfg: Config, rows: pa.Table, adapter: Optional[str], head: str = "") -> list[dict]:
    placement: dict = {"num_cpus": cfg.rollout.num_cpus_per_actor, "num_gpus": cfg.rollout.num_gpus_per_actor}
    groups = None
    if tensor_parallel.uses_placement_group(cfg.rollout):  # each predictor in its engine's placement group
        groups = tensor_parallel.EngineGroups(cfg.rollout, cfg.rollout.num_actors)
        placement |= {"num_gpus": 0, "ray_remote_args_fn": groups}
    ds = ray.data.from_arrow(rows).map_batches(
        HeadPredictor,
        fn_constructor_kwargs={"model_cfg": cfg.model, "rollout_cfg": cfg.rollout, "format_cfg": cfg.format,
                               "adapter": adapter, "max_new_tokens": cfg.eval.max_new_tokens},
        batch_size=cfg.eval.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.rollout.num_actors),
        **placement,
    )
    order = {row_id: i for i, row_id in enumerate(rows["id"].to_pylist())}
    records: list[dict] = []
    try:
        with bar(f"eval {head}", rows.num_rows, "q") as b:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                records.extend(batch.to_pylist())
                b.update(batch.num_rows)
        return sorted(records, key=lambda r: order[r["id"]])
    finally:
        if groups is not None:
            groups.remove()


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


def run_eval(cfg: Config, heads: list[str]) -> dict:
    adapters = head_adapters(cfg, heads)  # a configured adapter that is not there fails before any work
    rows = load_eval_rows(cfg)
    out = eval_dir(cfg)
    (out / "heads").mkdir(parents=True, exist_ok=True)
    for head, adapter in adapters.items():
        log.info("eval: %s head on %d rows%s", head, rows.num_rows, f" (adapter {adapter})" if adapter else "")
        records = evaluate_head(cfg, rows, adapter, head)
        tmp = out / "heads" / f"{head}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        tmp.rename(out / "heads" / f"{head}.jsonl")
    summary = build_summary(out, str(eval_source(cfg)))  # the CLI prints its table
    return {"stage": "eval", "heads": list(adapters), "adapters": adapters, "rows": rows.num_rows, "summary": summary}
