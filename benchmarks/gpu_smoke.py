"""GPU smoke test: SFT then 2 GRPO steps on a randomly initialised Qwen3-architecture model, bf16, the
learner and an hf rollout actor sharing one GPU through fractional Ray resources.

    python benchmarks/gpu_smoke.py [--device cuda] [--steps 2] [--tiny]

The model is built from a Qwen3 config on the spot (no download: the device machine has no network),
with SmolLM2's tokenizer from the embedded package. Prints JSON: GRPO seconds per step, where the steps
went, the rollout/learner logprob difference, and the GPU's peak memory in use (nvidia-smi, sampled
every 0.2 s, since the learner and the actor are other processes). `--device cpu` runs the same path
in fp32 on CPU, to check the script where no GPU is at hand; `--tiny` (2 layers, 64 wide, 16-token
completions) makes that check take a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medmcqa_ray import metric_names as M  # noqa: E402
from medmcqa_ray.config import ModelSection, load_config  # noqa: E402
from medmcqa_ray.pipeline import run_stage  # noqa: E402
from medmcqa_ray.stage import steps_logging  # noqa: E402


def build_qwen3(folder: Path, tiny: bool = False) -> Path:
    """A small random Qwen3 (grouped-query attention, q/k norms, tied embeddings) with SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from medmcqa_ray.models import load_tokenizer

    tokenizer = load_tokenizer(ModelSection(name="embedded:smollm2-135m-instruct"))
    size: dict[str, Any] = (  # Qwen3Config keyword arguments
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32) if tiny else
        dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
             head_dim=64))
    config = Qwen3Config(vocab_size=len(tokenizer), **size, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class GpuMemory(threading.Thread):
    """Peak memory in use on the GPU, from nvidia-smi."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max([self.peak_mib, *(int(x) for x in out.split())])
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model and 16-token completions")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    model = build_qwen3(work / "qwen3-random", tiny=args.tiny)
    share = ["scaling.use_gpu=true", "scaling.resources_per_worker={CPU: 1, GPU: 0.5}", "rollout.num_gpus_per_actor=0.5",
             "model.dtype=bfloat16"] if gpu else []
    cfg = load_config([REPO / "configs" / "ci.yaml"], [
        f"output_dir={work / 'out'}", f"model.name={model}", "sft.max_steps=2", "sft.save_steps=2",
        f"grpo.max_steps={args.steps}", f"grpo.save_steps={args.steps}",
        f"grpo.max_completion_length={16 if args.tiny else 64}", *share])
    memory = GpuMemory()
    if gpu:
        memory.start()
    start = time.monotonic()
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    grpo_start = time.monotonic()
    manifest = run_stage("grpo", cfg)
    memory.stop.set()
    steps = steps_logging(manifest.history, M.TIMING_STEP)
    print(json.dumps({
        "benchmark": "GPU smoke (random Qwen3, hf engine, GRPO)", "device": args.device,
        "dtype": "bfloat16" if gpu else "float32", "grpo_steps": len(steps),
        "s_per_step": [round(h["timing/step"], 2) for h in steps],
        "where_steps_go_s": {k: round(statistics.mean(h[f"timing/{k}"] for h in steps), 3)
                             for k in ("generate", "reward", "sync", "train")},
        "logprob_abs_diff": [h.get("rollout/logprob_abs_diff") for h in steps],
        "policy_version_lag": [h["rollout/policy_version_lag"] for h in steps],
        "grpo_stage_s": round(time.monotonic() - grpo_start, 1), "total_s": round(time.monotonic() - start, 1),
        "peak_gpu_memory_mib": memory.peak_mib if gpu else None,
    }, indent=2))


if __name__ == "__main__":
    main()
