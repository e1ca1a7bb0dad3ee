"""The heads evaluation scores (base, the SFT adapter, the GRPO adapter): which adapter each uses, and their
predictions over the rows, by Ray Data batch inference (`map_batches` over one actor pool of rollout
engines, greedy)."""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence, cast

import pyarrow as pa
import ray

from medmcqa_ray.config import Config
from medmcqa_ray.console import bar, first_with_native_stderr_to_log
from medmcqa_ray.errors import StageError
from medmcqa_ray.evaluation.predictor import GENERATION_ROWS_COLUMN, HeadPredictor
from medmcqa_ray.layout import Head, layout
from medmcqa_ray.rollout import tensor_parallel

log = logging.getLogger(__name__)
HEADS: tuple[Head, ...] = ("base", "sft", "grpo")


def head_adapters(cfg: Config, heads: Sequence[Head]) -> dict[str, Optional[str]]:
    """Adapter folder per head (None for base). A configured adapter (adapters.<head>) must be a PEFT
    folder; a default one that does not exist yet (no SFT run) just drops that head, with a note."""
    paths = layout(cfg)
    out: dict[str, Optional[str]] = {}
    for head in heads:
        if head == "base":
            out[head] = None
            continue
        configured = paths.configured_adapter(head)
        if configured is not None:
            if not (configured / "adapter_config.json").is_file():
                raise StageError(f"adapters.{head}: {configured} is not a PEFT adapter folder (no adapter_config.json)")
            out[head] = str(configured)
            continue
        default = paths.trained_adapter(head)
        if (default / "adapter_config.json").is_file():
            out[head] = str(default)
        else:
            log.info("eval: no %s adapter at %s yet; skipping the %s head", head, default, head)
    return out


def evaluate_heads(cfg: Config, rows: pa.Table, adapters: dict[str, Optional[str]]) -> dict[str, list[dict]]:
    """Per-row records (RESULT in predictor.py) of each head (its adapter folder, None for base), in the
    rows' order. One actor pool scores every head: each engine loads the base model once and switches
    adapters between heads, since loading the model (minutes for vLLM with a 4B model on GPU) costs far
    more than loading a LoRA adapter."""
    if not adapters:
        return {}
    placement: dict = {"num_cpus": cfg.rollout.num_cpus_per_actor, "num_gpus": cfg.rollout.num_gpus_per_actor}
    groups = None
    if tensor_parallel.uses_placement_group(cfg.rollout):  # each predictor in its engine's placement group
        groups = tensor_parallel.EngineGroups(cfg.rollout, cfg.rollout.num_actors)
        placement |= {"num_gpus": 0, "ray_remote_args_fn": groups}
    if cfg.eval.generate_limit is not None:  # generation's share: the first rows, the same for every head
        flags = [i < cfg.eval.generate_limit for i in range(rows.num_rows)]
        rows = rows.append_column(GENERATION_ROWS_COLUMN, pa.array(flags, pa.bool_()))
    # One block a batch (map_batches' batch_size=None), head after head, none straddling two: each engine
    # switches adapters once a head, and a head's first batch holds as many of its generation rows as fit
    # (the hf engine decodes up to rollout.max_batch_rows of them together). A single block would go to
    # one actor whole, idling the rest of the pool, with a progress bar stuck at 0 until the end.
    step = cfg.eval.batch_size
    per_head = [rows.append_column("head", pa.array([head] * rows.num_rows, pa.string())) for head in adapters]
    blocks = [table.slice(i, step) for table in per_head for i in range(0, table.num_rows, step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        HeadPredictor,
        fn_constructor_kwargs={"model_cfg": cfg.model, "rollout_cfg": cfg.rollout, "format_cfg": cfg.format,
                               "adapters": adapters, "max_new_tokens": cfg.eval.max_new_tokens, "scoring": cfg.eval.scoring},
        batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.rollout.num_actors),
        **placement,
    )
    order = {row_id: i for i, row_id in enumerate(rows["id"].to_pylist())}
    records: dict[str, list[dict]] = {head: [] for head in adapters}
    try:
        with bar(f"eval {', '.join(adapters)}", sum(t.num_rows for t in per_head), "q") as b:
            # Ray Data starts the actor pool when the first batch is asked for, and Ray's C++ core then writes an
            # ERROR on stderr, once per process: "Actor ... MapWorker(MapBatches(HeadPredictor)) has constructor
            # arguments in the object store and max_restarts > 0" (ray-project/ray#53727). Ray Data passes every
            # pool actor its DataContext and map function by reference and turns restarts on (#57733), so nothing
            # we pass causes it, and only map_batches(max_restarts=0) would avoid it, at the cost of Ray Data's
            # restart of a predictor that dies (killed by Ray's memory monitor, say). Its premise does not hold
            # here (the driver holds those references until the dataset is done), so it goes to the log file.
            # batch_format="pyarrow" makes every batch an Arrow table; Ray's signature returns any batch format.
            batches = cast(Iterable[pa.Table], ds.iter_batches(batch_size=None, batch_format="pyarrow"))
            for batch in first_with_native_stderr_to_log(batches):
                for record in batch.to_pylist():
                    records[record.pop("head")].append(record)
                b.update(batch.num_rows)
        return {head: sorted(rs, key=lambda r: order[r["id"]]) for head, rs in records.items()}
    finally:
        if groups is not None:
            groups.remove()
