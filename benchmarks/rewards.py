"""Completions scored per second: a RewardPool of 2 actors vs one in-process Scorer, same run.

    python benchmarks/rewards.py [--completions 2048] [--actors 2]

Completions are built from the offline sample's explanations (a correct, a wrong and a badly formatted
variant), so every component, the sentence-transformers similarity included, does real work. The pool
is warmed up (model loaded) before timing, as it is in a training run. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmcqa_ray.config import load_config  # noqa: E402
from medmcqa_ray.data.synthetic_sample import generate as synthetic_rows  # noqa: E402
from medmcqa_ray.rewards.scoring import RewardBatch, Scorer  # noqa: E402


def make_batch(n: int) -> RewardBatch:
    rows = synthetic_rows()["train"]
    completions, golds, exps, opts = [], [], [], []
    for i in range(n):
        r = rows[i % len(rows)]
        options = [r["opa"], r["opb"], r["opc"], r["opd"]]
        gold = "ABCD"[r["cop"]]
        variant = i % 3
        letter = gold if variant == 0 else "ABCD"[(r["cop"] + 1) % 4]
        body = r["exp"] if variant < 2 else "I am not sure about " + r["question"]
        tail = f"<end_working_out><SOLUTION>{letter}</SOLUTION>" if variant < 2 else f" answer {letter}"
        completions.append(body + tail)
        golds.append(gold)
        exps.append(r["exp"])
        opts.append(options)
    return RewardBatch(completions=completions, answer_labels=golds, explanations=exps, options=opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--completions", type=int, default=2048)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config([], [f"rewards.num_actors={args.actors}"])
    batch = make_batch(args.completions)

    scorer = Scorer(cfg.rewards, cfg.format.markers)
    scorer.score(batch.slice(0, 8))
    start = time.perf_counter()
    local = scorer.score(batch)
    local_s = time.perf_counter() - start

    import ray

    from medmcqa_ray.rewards.actor import RewardPool

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    pool = RewardPool(cfg.rewards, cfg.format.markers)
    pool.score(batch.slice(0, 8 * args.actors))  # load the model in every actor
    start = time.perf_counter()
    remote = pool.score(batch)
    pool_s = time.perf_counter() - start
    assert remote.components["correct"] == local.components["correct"]
    print(json.dumps({
        "benchmark": "reward scoring", "completions": args.completions, "cores": os.cpu_count(),
        "in_process": {"seconds": round(local_s, 2), "per_s": round(args.completions / local_s, 1)},
        "pool": {"actors": args.actors, "seconds": round(pool_s, 2), "per_s": round(args.completions / pool_s, 1)},
        "speedup_pool_vs_in_process": round(local_s / pool_s, 2),
        "similarity_scorer": remote.similarity_scorer,
    }, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
