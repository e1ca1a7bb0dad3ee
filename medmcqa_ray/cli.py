"""`medmcqa-ray STAGE [--config FILE ...] [key.sub=value ...] [--force]`.

Config files overlay in order, overrides apply last, and the whole config is validated before any
stage starts, so a typo fails in a second with the key's name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from medmcqa_ray import console
from medmcqa_ray.config import Config, load_config, resolved_dict
from medmcqa_ray.errors import user_error
from medmcqa_ray.redaction import redact_uri

COMMANDS = ["config", "download", "prep", "baseline", "sft", "grpo", "eval", "sweep", "all", "sweep-all", "tracking-replay"]
# The reference recipe's eval.py flags, kept so its users' commands work: flag -> config key.
EVAL_FLAGS = {"formatted_jsonl": "eval.formatted_jsonl", "formatted_dir": "eval.formatted_dir", "model_name": "model.name",
              "preformat_lora": "eval.sft_adapter", "grpo_lora": "eval.grpo_adapter", "out_dir": "eval.out_dir",
              "batch_size": "eval.batch_size", "limit": "eval.limit"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medmcqa-ray", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=COMMANDS, help="stage to run ('config' prints the resolved config)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied after the config files")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config; repeat to overlay")
    p.add_argument("--force", action="store_true", help="redo stages even when their manifest matches")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON at the end")
    ev = p.add_argument_group("baseline/eval (the reference recipe's eval.py flags; each sets the config key shown)")
    for flag, key in EVAL_FLAGS.items():
        ev.add_argument(f"--{flag}", metavar="VALUE", help=f"= {key}")
    return p


def summary_table(manifest: dict) -> str:
    """A short human summary of a stage's manifest."""
    rows = manifest.get("splits", {})
    if manifest.get("stage") == "sft":
        return (f"{manifest['steps']} steps, loss {manifest['first_loss']:.3f} -> {manifest['last_loss']:.3f}"
                f"{', resumed from step ' + str(manifest['resumed_from_step']) if manifest.get('resumed_from_step') else ''}"
                f"\nadapter: {manifest['adapter']}")
    if manifest.get("stage") == "grpo":
        steps = [h for h in manifest["history"] if "rewards/correct/mean" in h]
        lines = [f"{'step':>5}{'correct':>9}{'format':>8}{'reward':>9}{'length':>8}{'lag':>5}{'|dlogp|':>10}"]
        for h in steps:
            lines.append(f"{h['step']:>5}{h['rewards/correct/mean']:>9.3f}{h['rewards/format_exact/mean']:>8.3f}"
                         f"{h['reward']:>9.3f}{h['completions/mean_length']:>8.1f}{h['rollout/policy_version_lag']:>5.0f}"
                         f"{h.get('rollout/logprob_abs_diff', float('nan')):>10.1e}")
        return "\n".join(lines + [f"similarity reward scorer: {manifest.get('similarity_scorer', 'unknown')}",
                                  f"adapter: {manifest['adapter']} (continued {manifest['init_adapter']})"])
    if manifest.get("stage") == "sweep":
        from medmcqa_ray.tuning import results_table

        return results_table(manifest)
    if manifest.get("stage") == "eval":
        from medmcqa_ray.evaluation.report import table

        return table(manifest["summary"])
    if manifest.get("stage") == "download":
        lines = [f"{'split':<12}{'read':>8}{'kept':>8}{'quarant.':>10}{'limited':>9}  top reasons"]
        for split, c in rows.items():
            top = ", ".join(f"{k}={v}" for k, v in sorted(c["reasons"].items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"{split:<12}{c['read']:>8}{c['kept']:>8}{c['quarantined']:>10}{c['limited']:>9}  {top}")
        src = manifest.get("source", {})
        lines.append(f"source: {src.get('name')} (layout {src.get('layout')})")
        return "\n".join(lines)
    lines = [f"{'split':<12}{'rows':>8}{'targets':>9}{'shards':>8}"]
    for split, c in rows.items():
        lines.append(f"{split:<12}{c['rows']:>8}{c['with_target']:>9}{c['shards']:>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> list[dict]:
    from medmcqa_ray.pipeline import ALL, SWEEP, check_writable, run_stage
    from medmcqa_ray.tracking import Tracker, ui_command

    names = {"all": ALL, "sweep-all": SWEEP}.get(args.stage, [args.stage])
    # Every path in the config is absolute from here on (resolved at load against this directory).
    print(f"output_dir: {cfg.output_dir}", flush=True)
    check_writable(cfg.output_dir)  # its log file goes there: a clear error first, not a traceback
    log_file = console.start(cfg.output_dir, args.stage)
    manifests = []
    tracker = Tracker(cfg)
    with tracker.pipeline_run(args.stage):
        for name in names:
            m = run_stage(name, cfg, force=args.force, tracker=tracker)
            manifests.append(m)
            print(f"\n== {name}{' (skipped: up to date)' if m.get('skipped') else ''}")
            print(summary_table(m))
    workers = console.ray_logs()
    print(f"\nLogs: {log_file}" + (f" (workers: {workers})" if workers else ""))
    if tracker.enabled:
        print(f"MLflow: {ui_command(cfg)}")
    return manifests


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        flags = [f"{key}={getattr(args, flag)}" for flag, key in EVAL_FLAGS.items() if getattr(args, flag) is not None]
        cfg = load_config(args.config, flags + args.overrides)
        if args.stage == "config":
            print(yaml.safe_dump(resolved_dict(cfg), sort_keys=False), end="")
            return 0
        if args.stage == "tracking-replay":
            from medmcqa_ray.tracking import offline_dir, replay_offline, tracking_uri

            sent = replay_offline(cfg)
            print(f"sent {sent} offline tracking records from {offline_dir(cfg)} to {redact_uri(tracking_uri(cfg))}")
            return 0
        manifests = run(args, cfg)
        if args.json:
            print(json.dumps(manifests, indent=2, default=str))
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
