"""Seconds per GRPO step: our Ray pipeline against TRL's GRPOTrainer generating in-process.

    python benchmarks/grpo_step.py [--model embedded:smollm2-135m-instruct] [--steps 5] [--prompts 2] [--n 4] [--tokens 64]

Same run, same model, same starting adapter (a fresh LoRA of sft.lora's shape), same prompts (the
offline sample's train split, formatted and ending in the reasoning marker), same TRL settings
(`grpo_args`, the function the grpo stage itself uses) and the same reward components:
(1) TRL alone: `GRPOTrainer` in this process, generating with `model.generate`, rewards computed
    in-process by the same Scorer the reward actors run;
(2) ours: `medmcqa-ray grpo` (Ray Train worker, rollout actor, reward actor, adapter sync every step).
A step's time is the wall time from one optimiser step to the next; the first step of each (warm-up:
compiling, loading, first sync) is left out. Ours also says where its steps go (timing/* metrics).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medmcqa_ray.config import load_config  # noqa: E402
from medmcqa_ray.pipeline import run_stage  # noqa: E402


def fresh_adapter(cfg, folder: Path) -> Path:
    """A LoRA adapter of sft.lora's shape, untrained (B = 0): the starting point for both runs."""
    from peft import LoraConfig, get_peft_model

    from medmcqa_ray.models import load_model

    lora = cfg.sft.lora
    model = get_peft_model(load_model(cfg.model, "cpu"), LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    return folder


def step_times_callback():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.began = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.monotonic() - self.began)

    return StepTimes()


def trl_alone(cfg, work: Path) -> tuple[list[float], list[dict]]:
    """TRL's GRPOTrainer with in-process generation and in-process rewards."""
    import datasets
    from peft import PeftModel

    from medmcqa_ray.formatting import generation_prompt
    from medmcqa_ray.models import load_model, load_tokenizer
    from medmcqa_ray.rewards.scoring import RewardBatch, Scorer
    from medmcqa_ray.training.grpo import _trainer_class, grpo_args, training_prompts

    tokenizer = load_tokenizer(cfg.model)
    rows = training_prompts(cfg)
    dataset = datasets.Dataset.from_list([
        {"prompt": generation_prompt(r["prompt"], tokenizer, cfg.format.markers), "answer_label": r["answer_label"],
         "explanation": r["explanation"], "options": list(r["options"])} for r in rows])
    scorer = Scorer(cfg.rewards, cfg.format.markers)
    cache: dict = {}

    def component(name: str):
        def reward(completions, answer_label, explanation, options, **kwargs):
            key = id(completions)  # TRL calls every reward function on the same list: score it once
            if key not in cache:
                cache.clear()
                cache[key] = scorer.score(RewardBatch(completions=list(completions), answer_labels=answer_label,
                                                      explanations=explanation, options=options)).components
            return cache[key][name]

        reward.__name__ = name
        return reward

    model = PeftModel.from_pretrained(load_model(cfg.model, "cpu"), str(cfg.grpo.adapter), is_trainable=True)
    timer = step_times_callback()
    args = grpo_args(cfg, work, "cpu")
    trainer = _trainer_class()(model=model, reward_funcs=[component(n) for n in Scorer.names_for(cfg.rewards)],
                               args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return timer.times, [h for h in trainer.state.log_history if "completions/mean_length" in h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    overrides = [f"output_dir={work / 'out'}", f"model.name={args.model}", "tracking.enabled=false",
                 f"grpo.max_steps={args.steps}", f"grpo.prompts_per_step={args.prompts}", f"grpo.num_generations={args.n}",
                 f"grpo.max_completion_length={args.tokens}", f"grpo.save_steps={args.steps}", "grpo.split=train"]
    cfg = load_config([REPO / "configs" / "local.yaml"], overrides)
    for stage in ("download", "prep"):
        run_stage(stage, cfg)
    cfg = load_config([REPO / "configs" / "local.yaml"],
                      [*overrides, f"grpo.adapter={fresh_adapter(cfg, work / 'adapter')}"])

    import torch

    trl_steps, trl_history = trl_alone(cfg, work / "trl")
    start = time.monotonic()
    manifest = run_stage("grpo", cfg)
    ours_wall = time.monotonic() - start
    history = [h for h in manifest["history"] if "timing/step" in h]
    ours_steps = [h["timing/step"] for h in history]

    def per_step(times: list[float]) -> float:
        return statistics.median(times[1:] if len(times) > 1 else times)

    trl_s, ours_s = per_step(trl_steps), per_step(ours_steps)
    later = history[1:] or history
    print(json.dumps({
        "benchmark": "GRPO step", "model": args.model, "cores": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
        "steps": args.steps, "prompts_per_step": args.prompts, "num_generations": args.n, "max_completion_length": args.tokens,
        "trl_in_process": {"s_per_step": round(trl_s, 2), "step_times": [round(t, 2) for t in trl_steps],
                           "mean_completion_tokens": round(statistics.mean(h["completions/mean_length"] for h in trl_history[1:] or trl_history), 1)},
        "ours_ray": {
            "s_per_step": round(ours_s, 2), "step_times": [round(t, 2) for t in ours_steps],
            "stage_wall_s": round(ours_wall, 1),
            "where_a_step_goes_s": {k: round(statistics.mean(h[f"timing/{k}"] for h in later), 2)
                                    for k in ("generate", "reward", "sync", "train")},
            "mean_completion_tokens": round(statistics.mean(h.get("completions/mean_length", 0) for h in later), 1),
        },
        "overhead_ratio": round(ours_s / trl_s, 2),
        "goal_ratio": 1.2,
    }, indent=2))


if __name__ == "__main__":
    main()
