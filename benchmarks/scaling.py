"""GRPO samples per second with 1 and with 2 data-parallel learners, each with its own rollout and
reward actors: the same script a GPU cluster user runs on their config.

    python benchmarks/scaling.py [--config configs/ci.yaml] [--learners 1 2] [--steps 4] [key=value ...]
    python benchmarks/scaling.py --config configs/cluster.yaml --learners 1 2 4 8   # on a cluster

For each learner count, the same run (download, prep and sft once, then `grpo` with
scaling.num_workers=N from the same SFT adapter): samples a step = N x prompts_per_step x
num_generations, over the median wall time of a step (the first, warm-up step left out); where a step
goes (timing/*, the mean over steps, and each rank's generate time: a straggler shows there). Prints
JSON, with this machine's core count: on a 2-core CPU two learners and their actors share 2 cores, so
the figure says what the code's overhead costs, not what more hardware would give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmcqa_ray import metric_names as M  # noqa: E402
from medmcqa_ray.config import load_config  # noqa: E402
from medmcqa_ray.layout import layout  # noqa: E402
from medmcqa_ray.pipeline import run_stage  # noqa: E402
from medmcqa_ray.stage import steps_logging  # noqa: E402
from medmcqa_ray.training.placement import learner_group  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "ci.yaml"))
    ap.add_argument("--learners", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args()

    out = Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    base = [f"output_dir={out}", "tracking.enabled=false", f"grpo.max_steps={args.steps}",
            f"grpo.save_steps={args.steps}", *args.overrides]
    cfg = load_config([args.config], base)
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):  # local Ray: room for the most learners and their actors
        cpus = max(args.learners) * learner_group(cfg)["CPU"]
        base.append(f"ray.num_cpus={max(cfg.ray.num_cpus or 0, int(cpus + 0.999))}")
        cfg = load_config([args.config], base)
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    runs = {}
    for n in args.learners:
        run_cfg = load_config([args.config], [*base, f"scaling.num_workers={n}",
                                              f"adapters.sft={layout(cfg).trained_adapter('sft')}"])
        history = steps_logging(run_stage("grpo", run_cfg, force=True).history, M.TIMING_STEP)
        later = history[1:] or history
        step_s = statistics.median(h["timing/step"] for h in later)
        samples = n * run_cfg.grpo.prompts_per_step * run_cfg.grpo.num_generations
        runs[str(n)] = {
            "samples_per_step": samples, "s_per_step": round(step_s, 2), "samples_per_s": round(samples / step_s, 2),
            "where_a_step_goes_s": {k: round(statistics.mean(h[f"timing/{k}"] for h in later), 2)
                                    for k in ("generate", "reward", "sync", "train")},
            "generate_s_by_rank": [round(statistics.mean(h.get(f"timing/generate/rank{r}", h["timing/generate"]) for h in later), 2)
                                   for r in range(n)],
        }
    first = runs[str(args.learners[0])]["samples_per_s"]
    print(json.dumps({
        "benchmark": "GRPO scaling", "config": args.config, "model": cfg.model.name, "cores": os.cpu_count(),
        "steps": args.steps, "learners": runs,
        "speedup_vs_first": {n: round(r["samples_per_s"] / first, 2) for n, r in runs.items()},
        "note": f"this machine has {os.cpu_count()} cores shared by every learner and actor",
    }, indent=2))


if __name__ == "__main__":
    main()
