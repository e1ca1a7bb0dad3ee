"""Seconds per GRPO step of our Ray pipeline with each rollout engine (hf, vLLM), and against TRL's
GRPOTrainer generating in-process.

    python benchmarks/grpo_step.py [--model embedded:smollm2-135m-instruct] [--steps 5] [--prompts 2] [--n 4]
                                   [--tokens 64] [--engines hf,vllm] [--vllm-bind all] [--out FILE]

Same run, same model, same starting adapter (a LoRA of sft.lora's shape, r=16 on every projection as in
configs/local.yaml, with small random B so that it is not the base model), same prompts (the offline
sample's train split, formatted and ending in the reasoning marker), same TRL settings (`grpo_args`, the
function the grpo stage itself uses; temperature 1.0, which the vllm engine needs) and the same reward
components. `--engines` runs, one after the other in this order (never overlapping: each stage shuts its
actors down before the next starts), any of:
  hf    `medmcqa-ray grpo` with rollout.engine=hf (Ray Train worker, rollout actor, reward actor, adapter
        sync every step);
  vllm  the same with rollout.engine=vllm (vLLM's CPU engine in the rollout actor, each adapter version a
        new LoRA; rollout.kv_cache_gb, max_model_len and max_lora_rank sized for this workload);
  trl   TRL alone: `GRPOTrainer` in this process, generating with `model.generate`, rewards computed
        in-process by the same Scorer the reward actors run (the pipeline's overhead baseline).
A step's time is the wall time from one optimiser step to the next; the first step of each (warm-up:
loading, first sync, vLLM's first LoRA) is left out, and so is engine start-up (reported apart, from
the stage's wall time). Ours also says where its steps go (timing/* metrics) and the generate share.

vLLM's worker threads: VLLM_CPU_OMP_THREADS_BIND is set before Ray starts, so the rollout actor (and the
vLLM processes it starts) inherit it: `all` (default) binds the worker to every core here, as many threads
as the hf engine gets; `auto` is vLLM's own default, which on 2 cores keeps one for its scheduler.
Prints JSON (and writes it to --out).
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

from json_report import print_report  # noqa: E402  (this folder)

from medmcqa_ray import metric_names as M  # noqa: E402
from medmcqa_ray.config import load_config  # noqa: E402
from medmcqa_ray.pipeline import run_stage  # noqa: E402
from medmcqa_ray.stage import steps_logging  # noqa: E402


def uptime() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2),
            "at": time.strftime("%H:%M:%S")}


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def fresh_adapter(cfg, folder: Path, b_std: float) -> Path:
    """A LoRA adapter of sft.lora's shape with small random B (an SFT adapter is never zero): the
    starting point for every run."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medmcqa_ray.models import load_model

    lora = cfg.sft.lora
    torch.manual_seed(0)
    model = get_peft_model(load_model(cfg.model, "cpu"), LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, b_std)
    model.save_pretrained(str(folder))
    return folder


def step_times_callback():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
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
    from medmcqa_ray.layout import layout
    from medmcqa_ray.rewards.registry import reward_names
    from medmcqa_ray.rewards.scoring import RewardBatch, Scorer
    from medmcqa_ray.training.grpo import training_prompts
    from medmcqa_ray.training.grpo_trainer import RolloutGRPOTrainer, grpo_args

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

    model = PeftModel.from_pretrained(load_model(cfg.model, "cpu"), str(layout(cfg).adapter("sft")), is_trainable=True)
    timer = step_times_callback()
    args = grpo_args(cfg, work, "cpu")
    trainer = RolloutGRPOTrainer(model=model, reward_funcs=[component(n) for n in reward_names(cfg.rewards)],
                                     args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return timer.times, [h for h in trainer.state.log_history if "completions/mean_length" in h]


def per_step(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def ours(engine: str, overrides: list[str], base_out: Path, work: Path, args) -> dict:
    """The grpo stage with rollout.engine=`engine`, in its own output folder (a copy of the prepared data:
    the stage resumes from a checkpoint it finds, so runs must not share one)."""
    out = work / f"out-{engine}"
    shutil.copytree(base_out / "data", out / "data")
    engine_overrides = [f"rollout.engine={engine}"]
    if engine == "vllm":
        engine_overrides += [f"rollout.kv_cache_gb={args.kv_cache_gb}", f"rollout.max_model_len={args.max_model_len}"]
    cfg = load_config([REPO / "configs" / "local.yaml"], [*overrides, f"output_dir={out}", *engine_overrides])
    before, busy0, start = uptime(), busy_cpu_s(), time.monotonic()
    manifest = run_stage("grpo", cfg, force=True)
    wall = time.monotonic() - start
    busy = busy_cpu_s() - busy0
    history = steps_logging(manifest.history, M.TIMING_STEP)
    steps = [h["timing/step"] for h in history]
    later = history[1:] or history
    parts = {k: round(statistics.mean(h[f"timing/{k}"] for h in later), 2) for k in ("generate", "reward", "sync", "train")}
    s_per_step = per_step(steps)
    generated = statistics.mean(h.get("completions/mean_length", 0) for h in later) * args.prompts * args.n
    return {
        "engine": cfg.rollout.engine, "uptime_before": before, "uptime_after": uptime(),
        # Cores busy on the whole machine during the stage, ours included (this machine has `cores`).
        "machine_busy_cores_during_stage": round(busy / wall, 2),
        "s_per_step": round(s_per_step, 2), "step_times": [round(t, 2) for t in steps],
        "stage_wall_s": round(wall, 1),
        # What the steps do not explain: Ray Train start, the actors' start (vLLM: its engine), saving.
        "stage_overhead_s": round(wall - sum(steps), 1),
        "where_a_step_goes_s": parts,
        "generate_share": round(parts["generate"] / statistics.mean(h["timing/step"] for h in later), 3),
        "generate_tokens_per_s": round(generated / parts["generate"], 1) if parts["generate"] else None,
        "mean_completion_tokens": round(statistics.mean(h.get("completions/mean_length", 0) for h in later), 1),
        "logprob_abs_diff": [round(h["rollout/logprob_abs_diff"], 6) for h in history if "rollout/logprob_abs_diff" in h],
        "rollout_actors": [a.model_dump() for a in manifest.rollout_actors],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--engines", default="hf,vllm", help="comma-separated, run in this order: hf, vllm, trl")
    ap.add_argument("--vllm-bind", default="all", help="all | auto | a VLLM_CPU_OMP_THREADS_BIND value")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--lora-b-std", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if unknown := set(engines) - {"hf", "vllm", "trl"}:
        raise SystemExit(f"unknown engine: {sorted(unknown)}")

    # Before Ray starts (download does): its workers, the rollout actor and vLLM's processes inherit it.
    cpus = sorted(os.sched_getaffinity(0))
    if args.vllm_bind == "auto":
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        bind = "auto (vLLM's default: one core kept for its scheduler)"
    else:
        bind = os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus)) if args.vllm_bind == "all" else args.vllm_bind

    started = uptime()
    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    base_out = work / "out"
    overrides = [f"model.name={args.model}", "tracking.enabled=false",
                 f"grpo.max_steps={args.steps}", f"grpo.prompts_per_step={args.prompts}", f"grpo.num_generations={args.n}",
                 f"grpo.max_completion_length={args.tokens}", f"grpo.save_steps={args.steps}", "grpo.split=train",
                 "grpo.temperature=1.0"]  # the vllm engine reports raw logprobs: TRL's learner must not temper
    cfg = load_config([REPO / "configs" / "local.yaml"], [*overrides, f"output_dir={base_out}"])
    for stage in ("download", "prep"):
        run_stage(stage, cfg)
    overrides.append(f"adapters.sft={fresh_adapter(cfg, work / 'adapter', args.lora_b_std)}")
    # Every run can use vLLM's LoRA: max_lora_rank at least sft.lora.r (the same for every engine).
    overrides.append(f"rollout.max_lora_rank={max(cfg.sft.lora.r, 1)}")
    cfg = load_config([REPO / "configs" / "local.yaml"], [*overrides, f"output_dir={base_out}"])

    import torch

    report: dict = {
        "benchmark": "GRPO step", "model": args.model, "cores": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
        "steps": args.steps, "prompts_per_step": args.prompts, "num_generations": args.n, "max_completion_length": args.tokens,
        "temperature": 1.0, "lora": {"r": cfg.sft.lora.r, "alpha": cfg.sft.lora.alpha, "targets": list(cfg.sft.lora.target_modules)},
        "rollout": {"num_actors": cfg.rollout.num_actors, "num_cpus_per_actor": cfg.rollout.num_cpus_per_actor,
                    "learner_cpus": cfg.scaling.resources_per_worker, "ray_num_cpus": cfg.ray.num_cpus},
        "vllm": {"VLLM_CPU_OMP_THREADS_BIND": bind, "kv_cache_gb": args.kv_cache_gb, "max_model_len": args.max_model_len,
                 "max_lora_rank": cfg.rollout.max_lora_rank} if "vllm" in engines else None,
        "order": engines, "uptime_start": started, "engines": {},
    }
    for engine in engines:
        print(f"[grpo benchmark] {engine}: starting ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
        if engine == "trl":
            before = uptime()
            times, trl_history = trl_alone(cfg, work / "trl")
            report["engines"]["trl"] = {
                "uptime_before": before, "uptime_after": uptime(),
                "s_per_step": round(per_step(times), 2), "step_times": [round(t, 2) for t in times],
                "mean_completion_tokens": round(statistics.mean(h["completions/mean_length"] for h in trl_history[1:] or trl_history), 1)}
        else:
            report["engines"][engine] = ours(engine, overrides, base_out, work, args)
    done = report["engines"]
    if "hf" in done and "vllm" in done:
        report["vllm_over_hf_s_per_step"] = round(done["vllm"]["s_per_step"] / done["hf"]["s_per_step"], 2)
        report["vllm_over_hf_generate_s"] = round(done["vllm"]["where_a_step_goes_s"]["generate"]
                                                  / done["hf"]["where_a_step_goes_s"]["generate"], 2)
    if "trl" in done:
        report["overhead_ratio_vs_trl"] = {e: round(done[e]["s_per_step"] / done["trl"]["s_per_step"], 2)
                                           for e in ("hf", "vllm") if e in done}
        report["goal_ratio"] = 1.2
    report["uptime_end"] = uptime()
    shutil.rmtree(work, ignore_errors=True)
    print_report(report, args.out)


if __name__ == "__main__":
    main()
