"""Synchronous GRPO against one-step-off GRPO (grpo.max_off_policy_steps=1), side by side in one run.

    python benchmarks/async_grpo.py [--model embedded:smollm2-135m-instruct] [--steps 8] [--prompts 2] [--n 4]
                                    [--tokens 96] [--engine hf] [--out FILE]

Both runs are the grpo stage on the same prepared data (the offline sample's train split), from the same
starting adapter (a LoRA of sft.lora's shape with small random B), with the same seed, prompts, sample count
and TRL settings; only the mode and the cores differ:
  sync         grpo.max_off_policy_steps=0. Generation and training take turns, so each may use both cores:
               the learner and the rollout actor hold 2 CPUs each (torch threads follow), as in configs/local.yaml.
  sync_split   synchronous with the cores split as one-step-off splits them (1 CPU each): a learner device and
               a rollout device that wait for each other, as a split GPU pool does without overlap.
  one_step_off grpo.max_off_policy_steps=1. Generation of step t+1 runs while step t trains, so the learner and
               the rollout actor hold 1 CPU each, as separate devices would be.
On CPU the cores are one pool that either phase can use, so `sync` is the baseline to beat here; on GPUs a
rollout GPU cannot train, and `sync_split` is the one that stands for a split pool (docs/scaling.md).
Samples per second count the samples trained after the first step (the first has nothing generated ahead,
and holds the warm-up) over those steps' wall time. Prints JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from grpo_step import fresh_adapter, uptime  # noqa: E402  (this folder)
from json_report import print_report  # noqa: E402  (this folder)

from medmcqa_ray import metric_names as M  # noqa: E402
from medmcqa_ray.config import load_config  # noqa: E402
from medmcqa_ray.pipeline import run_stage  # noqa: E402
from medmcqa_ray.stage import steps_logging  # noqa: E402

MODES = {
    "sync": ["grpo.max_off_policy_steps=0", "scaling.resources_per_worker={CPU: 2}", "rollout.num_cpus_per_actor=2"],
    "sync_split": ["grpo.max_off_policy_steps=0", "scaling.resources_per_worker={CPU: 1}",
                   "rollout.num_cpus_per_actor=1"],
    "one_step_off": ["grpo.max_off_policy_steps=1", "scaling.resources_per_worker={CPU: 1}",
                     "rollout.num_cpus_per_actor=1"],
}


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)} \
        if values else {}


def run_mode(mode: str, overrides: list[str], base_out: Path, work: Path, samples_per_step: int) -> dict:
    out = work / f"out-{mode}"
    shutil.copytree(base_out / "data", out / "data")
    cfg = load_config([REPO / "configs" / "local.yaml"], [*overrides, *MODES[mode], f"output_dir={out}"])
    before, start = uptime(), time.monotonic()
    manifest = run_stage("grpo", cfg, force=True)
    wall = time.monotonic() - start
    history = steps_logging(manifest.history, M.TIMING_STEP)
    later = history[1:]
    steps_s = sum(h[M.TIMING_STEP] for h in later)
    lagged = [h for h in later if h[M.POLICY_VERSION_LAG] > 0]
    return {
        "overrides": MODES[mode], "uptime_before": before, "uptime_after": uptime(),
        "stage_wall_s": round(wall, 1), "step_times_s": [round(h[M.TIMING_STEP], 2) for h in history],
        "samples_per_s": round(len(later) * samples_per_step / steps_s, 3),
        "per_step_s": {k: round(statistics.fmean(h[f"timing/{k}"] for h in later), 2)
                       for k in ("step", "learner_wait", "generate", "reward", "train", "sync")},
        "policy_version_lag": [int(h[M.POLICY_VERSION_LAG]) for h in history],
        "importance_ratio": {"mean": _stats([h[M.IS_RATIO_MEAN] for h in lagged]),
                             "min": min((h[M.IS_RATIO_MIN] for h in lagged), default=None),
                             "max": max((h[M.IS_RATIO_MAX] for h in lagged), default=None),
                             "clipped_share": _stats([h[M.IS_RATIO_CLIPPED] for h in lagged])},
        "logprob_abs_diff": _stats([h[M.LOGPROB_ABS_DIFF] for h in later if M.LOGPROB_ABS_DIFF in h]),
        "correct": [round(h[M.CORRECT], 3) for h in history],
        "mean_completion_tokens": round(statistics.fmean(h[M.COMPLETION_LENGTH] for h in history), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--modes", default="sync,sync_split,one_step_off")
    ap.add_argument("--lora-b-std", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown mode: {sorted(unknown)}")

    work = Path(tempfile.mkdtemp(prefix="async-grpo-bench-"))
    base_out = work / "out"
    overrides = [f"model.name={args.model}", "tracking.enabled=false", f"rollout.engine={args.engine}",
                 f"grpo.max_steps={args.steps}", f"grpo.prompts_per_step={args.prompts}",
                 f"grpo.num_generations={args.n}", f"grpo.max_completion_length={args.tokens}",
                 f"grpo.save_steps={args.steps}", "grpo.temperature=1.0"]
    cfg = load_config([REPO / "configs" / "local.yaml"], [*overrides, f"output_dir={base_out}"])
    for stage in ("download", "prep"):
        run_stage(stage, cfg)
    overrides.append(f"adapters.sft={fresh_adapter(cfg, work / 'adapter', args.lora_b_std)}")
    if args.engine == "vllm":
        overrides.append(f"rollout.max_lora_rank={max(cfg.sft.lora.r, 1)}")

    report: dict = {"benchmark": "one-step-off GRPO against synchronous", "model": args.model, "engine": args.engine,
                    "cores": os.cpu_count(), "steps": args.steps, "prompts_per_step": args.prompts,
                    "num_generations": args.n, "max_completion_length": args.tokens, "uptime_start": uptime(),
                    "modes": {}}
    for mode in modes:
        print(f"[async benchmark] {mode}: starting ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
        report["modes"][mode] = run_mode(mode, overrides, base_out, work, args.prompts * args.n)
    done = report["modes"]
    if {"sync", "one_step_off"} <= set(done):
        report["samples_per_s_ratio"] = round(done["one_step_off"]["samples_per_s"] / done["sync"]["samples_per_s"], 3)
        report["goal_ratio"] = 1.3
    if {"sync_split", "one_step_off"} <= set(done):
        report["samples_per_s_ratio_vs_sync_split"] = round(
            done["one_step_off"]["samples_per_s"] / done["sync_split"]["samples_per_s"], 3)
    report["uptime_end"] = uptime()
    shutil.rmtree(work, ignore_errors=True)
    print_report(report, args.out)


if __name__ == "__main__":
    main()
