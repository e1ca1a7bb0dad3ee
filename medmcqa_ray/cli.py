"""`medmcqa-ray STAGE [--config FILE ...] [key.sub=value ...] [--force]`, and
`medmcqa-ray export --head sft|grpo [--out DIR] [--push REPO] --config FILE ...`.

Config files overlay in order, overrides apply last, and the whole config is validated before any
stage starts, so a typo fails in a second with the key's name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from medmcqa_ray import console
from medmcqa_ray.config import Config, load_config, resolved_dict
from medmcqa_ray.errors import user_error
from medmcqa_ray.layout import layout
from medmcqa_ray.redaction import redact_uri

if TYPE_CHECKING:
    from medmcqa_ray.stage import Manifest

COMMANDS = ["config", "memory", "download", "prep", "baseline", "sft", "grpo", "eval", "sweep", "all", "sweep-all", "tracking-replay",
            "export"]
# The reference recipe's eval.py flags, kept so its users' commands work: flag -> config key.
EVAL_FLAGS = {"formatted_jsonl": "eval.input", "formatted_dir": "eval.input", "model_name": "model.name",
              "preformat_lora": "adapters.sft", "grpo_lora": "adapters.grpo", "out_dir": "eval.out_dir",
              "batch_size": "eval.batch_size", "limit": "eval.limit"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medmcqa-ray", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=COMMANDS, help="stage to run ('config' prints the resolved config, "
                   "'memory' the GPU memory plan: a table, or with --json its numbers; 'export' writes a "
                   "head as a Hugging Face model folder, see --head)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied after the config files")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config; repeat to overlay")
    p.add_argument("--force", action="store_true", help="redo stages even when their manifest matches")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON at the end")
    ex = p.add_argument_group("export (a head's adapter merged into its base model: a Hugging Face model folder)")
    ex.add_argument("--head", choices=["sft", "grpo"], help="the head to export")
    ex.add_argument("--out", metavar="DIR", help="the folder to write (default: output_dir/export/<head>)")
    ex.add_argument("--push", metavar="REPO", help="upload the folder to this Hugging Face hub repository too")
    ev = p.add_argument_group("baseline/eval (the reference recipe's eval.py flags; each sets the config key shown)")
    for flag, key in EVAL_FLAGS.items():
        ev.add_argument(f"--{flag}", metavar="VALUE", help=f"= {key}")
    return p


def run(args: argparse.Namespace, cfg: Config) -> list[Manifest]:
    from medmcqa_ray.pipeline import ALL, SWEEP, check_writable, run_stage
    from medmcqa_ray.tracking import Tracker, ui_command
    from medmcqa_ray.tracking.adapter_source import HEADS, SOURCE_FILE, fetched_source, resolve_adapters

    names = {"all": ALL, "sweep-all": SWEEP}.get(args.stage, [args.stage])
    # Every path in the config is absolute from here on (resolved at load against this directory).
    print(f"output_dir: {cfg.output_dir}", flush=True)
    check_writable(layout(cfg).root)  # its log file goes there: a clear error first, not a traceback
    log_file = console.start(layout(cfg).logs, args.stage)
    fetched = resolve_adapters(cfg)  # models:/ and runs:/ adapters, fetched before any stage starts
    for head in HEADS:
        if (uri := getattr(cfg.adapters, head)) != (folder := getattr(fetched.adapters, head)):
            source = fetched_source(Path(folder))
            # resolve_adapters only swaps a URI for a folder fetch() wrote, source.json included.
            assert source is not None, f"adapters.{head}: {folder} has no {SOURCE_FILE}"
            print(f"adapters.{head}: {uri} is {source.resolved}, in {folder}", flush=True)
    cfg = fetched
    manifests: list[Manifest] = []
    tracker = Tracker(cfg)
    with tracker.pipeline_run(args.stage) as pipeline_run:
        for name in names:
            m = run_stage(name, cfg, force=args.force, tracker=tracker)
            manifests.append(m)
            print(f"\n== {name}{' (skipped: up to date)' if m.skipped else ''}")
            print(m.table())
    workers = console.ray_logs()
    print(f"\nLogs: {log_file}" + (f" (workers: {workers})" if workers else ""))
    if tracker.enabled:
        print(f"MLflow: {ui_command(cfg, tracker.page(pipeline_run))}")
    return manifests


def export(args: argparse.Namespace, cfg: Config) -> None:
    from medmcqa_ray.export import export as export_head
    from medmcqa_ray.tracking import ui_command
    from medmcqa_ray.tracking.adapter_source import resolve_adapters

    log_file = console.start(layout(cfg).logs, "export")
    exported = export_head(resolve_adapters(cfg), args.head, args.out and Path(args.out), args.push)
    print(exported.summary())
    print(f"Logs: {log_file}")
    if exported.mlflow_page is not None:
        print(f"MLflow: {ui_command(cfg, exported.mlflow_page)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.stage == "export" and args.head is None:
        parser.error("export needs --head sft or --head grpo")
    if args.stage != "export" and (args.head or args.out or args.push):
        parser.error("--head, --out and --push go with `export` only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        flags = [f"{key}={getattr(args, flag)}" for flag, key in EVAL_FLAGS.items() if getattr(args, flag) is not None]
        cfg = load_config(args.config, flags + args.overrides)
        if args.stage == "config":
            print(yaml.safe_dump(resolved_dict(cfg), sort_keys=False), end="")
            return 0
        if args.stage == "memory":
            from medmcqa_ray.memory.check import memory_plan
            from medmcqa_ray.memory.table import render

            plan = memory_plan(cfg)
            print(json.dumps(plan.as_json(), indent=2) if args.json else render(plan))
            return 0
        if args.stage == "tracking-replay":
            from medmcqa_ray.tracking import replay_offline, tracking_uri

            sent = replay_offline(cfg)
            print(f"sent {sent} offline tracking records from {layout(cfg).offline_tracking} to {redact_uri(tracking_uri(cfg))}")
            return 0
        if args.stage == "export":
            export(args, cfg)
            return 0
        manifests = run(args, cfg)
        if args.json:
            print(json.dumps([m.as_dict() for m in manifests], indent=2, default=str))
        return 0
    except Exception as e:  # noqa: BLE001 - turn our errors into one readable line, re-raise the rest
        err = user_error(e)
        if err is None:
            raise
        # Ray appends its retry advice to a task's exception message; ours is the first line.
        print(f"medmcqa-ray: error: {redact_uri(str(err).splitlines()[0])}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
