"""Tokens/second of the hf rollout engine: batched sampling vs one prompt at a time, against the
machine's measured matmul ceiling.

    python benchmarks/rollout.py [--model embedded:smollm2-135m-instruct] [--prompts 8] [--n 4] [--tokens 128]

Same run, same engine, same prompts (formatted offline-sample questions): (1) every prompt at once
with n samples each, (2) a loop generating one prompt and one sample at a time. The ceiling is the
measured fp32 matmul rate divided by ~2 x parameters FLOPs per token, so the figure reads as a
fraction of what this CPU could do. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmcqa_ray.config import FormatConfig, ModelConfig  # noqa: E402
from medmcqa_ray.data.offline_sample import generate as offline_rows  # noqa: E402
from medmcqa_ray.data.normalise import normalise_row  # noqa: E402
from medmcqa_ray.formatting import format_row, generation_prompt  # noqa: E402
from medmcqa_ray.rollout.hf_engine import HFEngine  # noqa: E402
from medmcqa_ray.rollout.types import Sampling  # noqa: E402


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def prompts(engine: HFEngine, count: int) -> list[str]:
    cfg = FormatConfig()
    rows = []
    for raw in offline_rows()["validation"][:count]:
        rec = normalise_row(raw, split="validation", source="bench", layout="hf")
        rows.append(generation_prompt(format_row(rec, cfg)["prompt"], engine.tokenizer, cfg.markers))
    return rows


def tokens(out) -> int:
    return sum(len(c.token_ids) for group in out for c in group)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    engine = HFEngine(ModelConfig(name=args.model), device="cpu")
    batch = prompts(engine, args.prompts)
    sampling = Sampling(n=args.n, max_new_tokens=args.tokens, temperature=1.0, seed=0)
    engine.generate(batch[:1], Sampling(max_new_tokens=4))  # warm-up

    start = time.perf_counter()
    out = engine.generate(batch, sampling)
    batched_s = time.perf_counter() - start
    batched = tokens(out)
    # generate keeps finished samples in the batch until the longest ends: count those slots too.
    slots = len(batch) * args.n * max(len(c.token_ids) for g in out for c in g)

    one = sampling.model_copy(update={"n": 1})
    start, looped = time.perf_counter(), 0
    for p in batch[: max(1, args.prompts // 4)]:  # a quarter of the prompts, one sample each: the rate is what counts
        looped += tokens(engine.generate([p], one))
    looped_s = time.perf_counter() - start

    params = sum(p.numel() for p in engine.model.parameters())
    gflops = matmul_gflops()
    ceiling = gflops * 1e9 / (2 * params)
    rate = batched / batched_s
    print(json.dumps({
        "benchmark": "hf rollout engine", "model": args.model, "parameters": params, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "batched": {"prompts": args.prompts, "n": args.n, "tokens": batched, "seconds": round(batched_s, 2), "tokens_per_s": round(rate, 1),
                    "batch_slots_per_s": round(slots / batched_s, 1)},
        "one_at_a_time": {"tokens": looped, "seconds": round(looped_s, 2), "tokens_per_s": round(looped / looped_s, 1)},
        "speedup_batched_vs_loop": round(rate / (looped / looped_s), 2),
        "matmul_gflops": round(gflops, 1), "ceiling_tokens_per_s": round(ceiling, 1),
        "fraction_of_ceiling": round(rate / ceiling, 3),
        "slots_fraction_of_ceiling": round(slots / batched_s / ceiling, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
