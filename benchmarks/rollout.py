"""Tokens/second of the rollout engines, hf against vLLM on the same workload, and of the hf engine against
plain transformers `generate`, a one-prompt-at-a-time loop and the machine's measured matmul ceiling.

    python benchmarks/rollout.py [--model embedded:smollm2-135m-instruct] [--prompts 64] [--n 4] [--tokens 128]
                                 [--engines hf,vllm] [--modes base,adapter] [--no-baselines] [--out FILE]

Engines (`--engines`): started one after the other, then measured in turn, never two at once: while one
generates, the other sits idle (vLLM's worker stops polling 1 s after its last step; its CPU time meanwhile
is reported as `idle_engine_cpu_s`, near 0). The order is ABBA (each mode runs the engines in the reverse
order of the mode before), so a machine load that drifts during the run favours neither; `--rounds`
repeats the modes. Each engine gets the same prompts (token ids: formatted offline-sample questions,
ending in the reasoning marker, as GRPO sends them), the same Sampling (n samples each, max_new_tokens,
temperature 1, no seed: see below) and is timed, after its start-up and a warm-up call, in each mode:
  base     the base model;
  adapter  a LoRA adapter (r=16 on every projection, random non-zero B) loaded through
           `engine.load_adapter`, as GRPO always generates: version 1 is loaded and warmed up, then
           version 2 is loaded (timed: `adapter_load_s`) and generated with straight away, like a GRPO step;
  greedy   (optional) temperature 0, n=1, with the adapter: what evaluation asks for.
A rate is generated tokens / wall seconds of the generate call; start-up (model load, vLLM's engine
processes and profiling) is reported apart. `cpu_s` is the CPU time of the engine's processes during the
call and `other_load_cores` the cores everyone else on the machine used meanwhile (from /proc/stat): a
shared machine's noise shows there. `vllm_over_hf` is the ratio of the rates, per mode
(`vllm_over_hf_quiet_runs` over the runs during which the rest of the machine used under 0.25 cores;
`vllm_over_hf_per_cpu_s` the ratio of tokens per CPU second).

vLLM on CPU binds its worker's OpenMP threads itself (VLLM_CPU_OMP_THREADS_BIND). Its default, `auto`,
keeps one core per worker for its scheduler process: on 2 cores the model runs on ONE thread. `--vllm-bind
all` (the default here) binds the worker to every core this process may use, as many threads as the hf
engine's torch threads; `--vllm-bind auto` measures vLLM's own default; anything else is passed as is.

Seeds: vLLM 0.32 on CPU kills its engine ("CPU Generator does not use offset", EngineDeadError) when a
seeded request's prompt is prefilled in chunks, which happens as soon as one step's prompts exceed
max_num_batched_tokens (4096): 64 prompts x 4 samples do. So both engines sample unseeded by default
(`--seed N` seeds both, for workloads small enough).

With the hf engine also (unless --no-baselines), on the base model: (1) the engine's full run says where
its time goes; (2) the engine, plain batched `model.generate` and transformers' continuous batching
(`generate_batch`) on the first 8 prompts; (3) a loop generating one prompt and one sample at a time.
The ceiling is the measured fp32 matmul rate divided by 2 x parameters FLOPs per token, so a figure
reads as a fraction of what this CPU could do; `flop_utilisation` also counts the prompt tokens the
engine had to prefill. `bounds` says how far this workload can get: decode needs at least as many
steps as the longest sample has tokens, and `full_batch_decode_tokens_per_s` is the loop's rate with
every slot running (its steady-state peak). Prints JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from json_report import print_report  # noqa: E402  (this folder)

from medmcqa_ray.config import FormatSection, ModelSection, RolloutSection  # noqa: E402
from medmcqa_ray.data.normalise import normalise_row  # noqa: E402
from medmcqa_ray.data.synthetic_sample import generate as synthetic_rows  # noqa: E402
from medmcqa_ray.formatting import format_row, generation_prompt, prompt_token_ids  # noqa: E402
from medmcqa_ray.models import load_tokenizer  # noqa: E402
from medmcqa_ray.rollout.types import AdapterUpdate, Sampling  # noqa: E402

if TYPE_CHECKING:
    from medmcqa_ray.rollout.hf_engine import HFEngine
    from medmcqa_ray.rollout.vllm_engine import VLLMEngine

QUIET = 0.25
"""A run counts as quiet when the rest of the machine used fewer cores than this meanwhile."""
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------ the machine


def uptime() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2),
            "at": time.strftime("%H:%M:%S")}


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _is_vllm(proc) -> bool:
    """vLLM's engine core and worker processes (named VLLM::EngineCore, VLLM::Worker), not other children
    such as multiprocessing's resource tracker."""
    import psutil

    try:
        return "VLLM" in proc.name() or any("VLLM" in part for part in proc.cmdline()[:1])
    except psutil.Error:
        return False


def vllm_processes() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if _is_vllm(p)]


def _cpu_s(procs: list) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Meter:
    """Over a `with` block: wall time, the CPU time of the engine's processes (`own`: this process, plus
    vLLM's for the vllm engine), of the other engine's idle processes (`idle`: must stay near 0, the
    engines never run at once) and of everyone else on the machine (from /proc/stat)."""

    def __init__(self, own: Optional[list] = None, idle: Optional[list] = None):
        import psutil

        self.own = own if own is not None else [psutil.Process()]
        self.idle = idle or []

    def __enter__(self) -> "Meter":
        self.own0, self.idle0, self.busy0 = _cpu_s(self.own), _cpu_s(self.idle), _busy_cpu_s()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_s = _cpu_s(self.own) - self.own0
        self.idle_cpu_s = _cpu_s(self.idle) - self.idle0
        self.other_cpu_s = max(0.0, _busy_cpu_s() - self.busy0 - self.cpu_s - self.idle_cpu_s)

    def report(self) -> dict:
        out = {"seconds": round(self.seconds, 2), "cpu_s": round(self.cpu_s, 1),
               "cores_used": round(self.cpu_s / self.seconds, 2),
               "other_load_cores": round(self.other_cpu_s / self.seconds, 2)}
        if self.idle:
            out["idle_engine_cpu_s"] = round(self.idle_cpu_s, 2)
        return out


def matmul_gflops(size: int = 1024, repeats: int = 10, trials: int = 5) -> float:
    """The best of several trials: the ceiling is the machine's peak, and a shared VM's noise only lowers it."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


# ---------------------------------------------------------------------------------- the workload


def prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """Token ids of `count` formatted validation questions, as the GRPO rollout function makes them."""
    cfg = FormatSection()
    rows = synthetic_rows()["validation"]
    if count > len(rows):
        raise SystemExit(f"--prompts {count}: the offline sample has {len(rows)} validation questions")
    out = []
    for raw in rows[:count]:
        rec = normalise_row(raw, split="validation", source="bench", layout="hf")
        out.append(prompt_token_ids(generation_prompt(format_row(rec, cfg)["prompt"], tokenizer, cfg.markers), tokenizer))
    return out


def random_adapter(model_cfg: ModelSection, rank: int, b_std: float, versions: int = 2) -> list[tuple[dict, dict]]:
    """LoRA adapters of rank `rank` on every projection with random non-zero B (an untrained one, B = 0,
    would let an engine skip nothing but hide nothing either; a trained one is never zero), as
    (peft_config, weights) pairs, one per version, each a little different."""
    from peft import LoraConfig, get_peft_model

    from medmcqa_ray.adapters import adapter_from_model
    from medmcqa_ray.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(model_cfg, "cpu"), LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    out = []
    for _ in range(versions):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, b_std)
        out.append(adapter_from_model(model))
    del model
    gc.collect()
    return out


def tokens(out) -> int:
    return sum(len(c.token_ids) for group in out for c in group)


def summary(out) -> dict:
    samples = [c for group in out for c in group]
    return {"samples": len(samples), "tokens": tokens(out),
            "mean_tokens_per_sample": round(tokens(out) / max(len(samples), 1), 1),
            "longest_sample": max((len(c.token_ids) for c in samples), default=0),
            "finish_reasons": dict(Counter(c.finish_reason for c in samples))}


def measure(engine, batch: list[list[int]], sampling: Sampling, meter: Meter) -> dict:
    with meter as m:
        out = engine.generate(batch, sampling)
    result = summary(out) | m.report()
    return result | {"tokens_per_s": round(result["tokens"] / m.seconds, 1),
                     "tokens_per_cpu_s": round(result["tokens"] / max(m.cpu_s, 1e-9), 1)}


# ---------------------------------------------------------------------------- hf-only baselines


def plain_generate(engine, batch: list[list[int]], sampling: Sampling) -> tuple[int, int, float]:
    """transformers `generate` as a user would call it: left padding, num_return_sequences. Returns
    generated tokens (up to each sample's EOS), batch slots (rows x steps) and seconds."""
    engine.tokenizer.padding_side = "left"
    enc = engine.tokenizer.pad({"input_ids": batch}, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    out = engine.model.generate(**enc, do_sample=True, temperature=sampling.temperature, top_p=1.0, top_k=0,
                                num_return_sequences=sampling.n, max_new_tokens=sampling.max_new_tokens,
                                eos_token_id=sorted(engine.eos_ids), pad_token_id=engine.pad_id)
    seconds = time.perf_counter() - start
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    useful = sum(next((i + 1 for i, t in enumerate(row) if t in engine.eos_ids), len(row)) for row in new)
    return useful, len(new) * len(new[0]), seconds


def library_continuous_batching(engine, batch: list[list[int]], sampling: Sampling) -> tuple[int, float]:
    """transformers' own continuous batching (`generate_batch`), the library alternative to our loop."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0,
                              num_return_sequences=sampling.n, max_new_tokens=sampling.max_new_tokens,
                              eos_token_id=sorted(engine.eos_ids), pad_token_id=engine.pad_id)
    # Its KV cache sized for this batch: left to itself, it takes 90% of the free memory (18 GB here), which
    # on a shared machine gets processes killed.
    page = 256
    blocks = len(batch) * sampling.n * (-(-(max(map(len, batch)) + sampling.max_new_tokens) // page) + 1)
    cb = ContinuousBatchingConfig(return_logprobs=True, page_size=page, num_blocks=blocks, max_batch_tokens=2048)
    start = time.perf_counter()
    out = engine.model.generate_batch([list(p) for p in batch], generation_config=config, continuous_batching_config=cb)
    return sum(len(o.generated_tokens) for o in out.values()), time.perf_counter() - start


@torch.inference_mode()
def full_batch_rate(engine, rows: int, context: int, steps: int = 6) -> float:
    """Tokens/s of decode steps with every one of `rows` slots running at `context` tokens: the loop's
    steady-state peak, which a workload only approaches while no prefill or short tail is in the way."""
    from medmcqa_ray.rollout.decode import draw, warpers
    from medmcqa_ray.rollout.slot_cache import SlotCache

    sampling = Sampling(temperature=1.0)
    cache = SlotCache(engine.model.config, rows, context + steps + 8, torch.float32, torch.device("cpu"))
    cache.lengths[:] = context
    pending = torch.randint(0, 1000, (rows,))
    start = None
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        cache.span = int(cache.lengths.max()) + 1
        mask = torch.where(torch.arange(cache.span)[None, :] <= cache.lengths[:, None], 0.0, torch.finfo(torch.float32).min)
        out = engine.model(input_ids=pending[:, None], attention_mask=mask[:, None, None, :],
                           position_ids=cache.lengths[:, None].clone(), past_key_values=cache, use_cache=True)
        cache.lengths += 1
        pending, _ = draw(out.logits[:, -1], sampling, warpers(sampling), None)
    assert start is not None  # set at step 2, after the warm-up (steps >= 1)
    return rows * steps / (time.perf_counter() - start)


def timed(engine, batch: list[list[int]], sampling: Sampling) -> tuple[int, float]:
    start = time.perf_counter()
    out = engine.generate(batch, sampling)
    return tokens(out), time.perf_counter() - start


def hf_baselines(engine, batch: list[list[int]], sampling: Sampling, full: dict) -> dict:
    """The hf engine against plain `generate`, `generate_batch`, a one-at-a-time loop and the matmul
    ceiling; `full` is the engine's base-mode measurement on the whole batch (engine.last_stats is its)."""
    stats = full["_stats"]
    full_tokens, full_s = full["tokens"], full["seconds"]
    context = sum(len(p) for p in batch) // len(batch) + 32
    peak = full_batch_rate(engine, engine.max_rows, context)
    small = batch[:8]
    small_tokens, small_s = timed(engine, small, sampling)
    plain_tokens, plain_slots, plain_s = plain_generate(engine, small, sampling)
    library_tokens, library_s = library_continuous_batching(engine, small, sampling)
    one = sampling.model_copy(update={"n": 1})
    loop_tokens, loop_s = 0, 0.0
    for p in batch[:4]:  # the rate is what counts
        t, s = timed(engine, [p], one)
        loop_tokens, loop_s = loop_tokens + t, loop_s + s

    params = sum(p.numel() for p in engine.model.parameters())
    gflops = matmul_gflops()
    ceiling = gflops * 1e9 / (2 * params)
    rate = full_tokens / full_s
    prefilled = stats.prompt_tokens - stats.prefix_tokens_reused
    return {
        "parameters": params, "matmul_gflops": round(gflops, 1), "ceiling_tokens_per_s": round(ceiling, 1),
        "engine": {
            "prompts": len(batch), "tokens": full_tokens, "seconds": round(full_s, 2),
            "tokens_per_s": round(rate, 1), "fraction_of_ceiling": round(rate / ceiling, 3),
            "flop_utilisation": round((full_tokens + prefilled) / full_s / ceiling, 3),
            "where_time_goes": {"prefill_s": round(stats.prefill_s, 2), "decode_s": round(stats.decode_s, 2),
                                "decode_steps": stats.steps, "mean_running_rows": round(stats.mean_rows, 1),
                                "prompt_tokens": stats.prompt_tokens, "shared_prefix_tokens_reused": stats.prefix_tokens_reused},
        },
        # Why this workload sits below the loop's peak: no schedule can finish in fewer decode steps
        # than the longest sample has tokens, so the mean batch is at most tokens / longest.
        "bounds": {
            "longest_sample_tokens": full["longest_sample"],
            "max_mean_rows_possible": round(full_tokens / full["longest_sample"], 1),
            "full_batch_rows": engine.max_rows, "full_batch_context": context,
            "full_batch_decode_tokens_per_s": round(peak, 1),
            "full_batch_fraction_of_ceiling": round(peak / ceiling, 3),
        },
        "same_8_prompts": {
            "engine_tokens_per_s": round(small_tokens / small_s, 1),
            "plain_generate_tokens_per_s": round(plain_tokens / plain_s, 1),
            "plain_generate_useful_slot_fraction": round(plain_tokens / plain_slots, 3),
            "transformers_generate_batch_tokens_per_s": round(library_tokens / library_s, 1),
            "speedup": round((small_tokens / small_s) / (plain_tokens / plain_s), 2),
        },
        "one_at_a_time": {"tokens": loop_tokens, "seconds": round(loop_s, 2), "tokens_per_s": round(loop_tokens / loop_s, 1)},
        "speedup_engine_vs_loop": round(rate / (loop_tokens / loop_s), 2),
    }


# -------------------------------------------------------------------------------------- engines


def vllm_binding(choice: str) -> dict:
    """Set VLLM_CPU_OMP_THREADS_BIND for the vLLM engine about to start; say what it means."""
    cpus = sorted(os.sched_getaffinity(0))
    if choice == "auto":
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        return {"VLLM_CPU_OMP_THREADS_BIND": "auto (vLLM's default)",
                "meaning": f"vLLM keeps 1 of the {len(cpus)} cores for its scheduler process: the worker runs "
                           f"{max(len(cpus) - 1, 1)} OpenMP thread(s)"}
    value = ",".join(map(str, cpus)) if choice == "all" else choice
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = value
    return {"VLLM_CPU_OMP_THREADS_BIND": value,
            "meaning": f"the worker's OpenMP threads bound to cores {value} (as many threads as the hf engine's "
                       f"torch threads, {torch.get_num_threads()}); vLLM's scheduler and this driver share them"}


class Live:
    """A started engine and what has been measured of it."""

    def __init__(self, name: str, model_cfg: ModelSection, rollout_cfg: RolloutSection, adapters: list):
        from medmcqa_ray.rollout.engine_factory import make_engine

        self.name, self.adapters, self.version = name, adapters, 0
        self.report: dict[str, Any] = {"uptime_before_start": uptime()}
        with Meter(own=[]) as m:
            self.engine = make_engine(name, model_cfg=model_cfg, rollout_cfg=rollout_cfg)
        self.report["startup_s"] = round(m.seconds, 1)
        if name == "hf":
            self.report |= {"torch_threads": torch.get_num_threads(), "max_batch_rows": self.hf().max_rows}
        else:
            sched = self.vllm().llm.llm_engine.vllm_config.scheduler_config
            self.report["vllm"] = {"max_num_seqs": sched.max_num_seqs, "max_num_batched_tokens": sched.max_num_batched_tokens,
                                   "kv_cache_gb": rollout_cfg.kv_cache_gb, "max_model_len": rollout_cfg.max_model_len,
                                   "max_lora_rank": rollout_cfg.max_lora_rank, "enable_prefix_caching": True}

    def hf(self) -> HFEngine:
        """The engine, which is the hf engine when `name` is "hf" (make_engine is typed for either)."""
        from medmcqa_ray.rollout.hf_engine import HFEngine

        assert isinstance(self.engine, HFEngine), self.name
        return self.engine

    def vllm(self) -> VLLMEngine:
        """The engine, which is the vLLM engine when `name` is "vllm"."""
        from medmcqa_ray.rollout.vllm_engine import VLLMEngine

        assert isinstance(self.engine, VLLMEngine), self.name
        return self.engine

    def meter(self, others: list["Live"]) -> Meter:
        """This engine's processes, and the idle ones of the engines not being measured."""
        import psutil

        vllm = vllm_processes()
        own = [psutil.Process()] + (vllm if self.name == "vllm" else [])
        return Meter(own=own, idle=[p for p in vllm if self.name != "vllm"] if any(o.name == "vllm" for o in others) else [])

    def warm_up(self, batch: list[list[int]], others: list["Live"]) -> None:
        with self.meter(others) as m:
            self.engine.generate(batch[:2], Sampling(n=2, max_new_tokens=8, seed=0))
        self.report["warmup_s"] = round(m.seconds, 1)

    def load_next_adapter(self, batch: list[list[int]]) -> None:
        """The next adapter version, as GRPO sends one after every step. Version 1 is loaded and used once
        first (a one-off: LoRA buffers set up); later loads are timed and measured right away."""
        if self.version == 0:
            config, weights = self.adapters[0]
            self.engine.load_adapter(AdapterUpdate(version=1, peft_config=config), weights)
            self.engine.generate(batch[:2], Sampling(n=2, max_new_tokens=8, seed=0))
            self.version = 1
        config, weights = self.adapters[self.version % len(self.adapters)]
        start = time.perf_counter()
        self.engine.load_adapter(AdapterUpdate(version=self.version + 1, peft_config=config), weights)
        self.report.setdefault("adapter_load_s", []).append(round(time.perf_counter() - start, 2))
        self.version += 1

    def shutdown(self) -> None:
        """Stop the engine; for vLLM, wait until its processes are gone."""
        import psutil

        if self.name == "vllm":
            children = vllm_processes()
            engine = self.vllm()
            core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del engine.llm, engine  # the local name too, so the collection below frees the engine
            gc.collect()
            _, alive = psutil.wait_procs(children, timeout=30)
            if alive:
                raise RuntimeError(f"vLLM processes still running after shutdown: {[p.pid for p in alive]}")
        del self.engine
        gc.collect()
        self.report["uptime_after"] = uptime()


def rate(runs: list[dict]) -> dict:
    """Several runs of one mode as one: total tokens over total seconds."""
    if len(runs) == 1:
        return runs[0]
    tokens_, seconds, cpu = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs), sum(r["cpu_s"] for r in runs)
    other = sum(r["other_load_cores"] * r["seconds"] for r in runs)
    return {"tokens": tokens_, "seconds": round(seconds, 2), "tokens_per_s": round(tokens_ / seconds, 1),
            "tokens_per_cpu_s": round(tokens_ / cpu, 1), "cores_used": round(cpu / seconds, 2),
            "other_load_cores": round(other / seconds, 2), "runs": runs}


def compare(names: list[str], model_cfg: ModelSection, configs: dict[str, RolloutSection], batch: list[list[int]],
            sampling: Sampling, modes: list[str], rounds: int, adapters: list, baselines: bool) -> dict[str, dict]:
    """Start the engines one after the other, then measure them in turn, never two at once (the one not
    measured sits idle; its CPU time then is reported as idle_engine_cpu_s), in ABBA order: each mode
    runs the engines in the reverse order of the mode before, so a drifting machine load favours neither."""
    live: list[Live] = []
    try:
        for name in names:
            print(f"[rollout benchmark] starting {name} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
            live.append(Live(name, model_cfg, configs[name], adapters))
            live[-1].warm_up(batch, live[:-1])
        # vLLM's start may change this process's torch threads; the hf engine runs with the ones it had.
        hf_threads = live[0].report.get("torch_threads") if live[0].name == "hf" else None
        runs: dict[str, dict[str, list]] = {e.name: {} for e in live}
        schedule = [mode for _ in range(rounds) for mode in modes]
        for i, mode in enumerate(schedule):
            for e in (live if i % 2 == 0 else live[::-1]):
                others = [o for o in live if o is not e]
                print(f"[rollout benchmark] {e.name} {mode} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
                if mode == "adapter":
                    e.load_next_adapter(batch)
                elif mode == "greedy" and e.version == 0:
                    e.load_next_adapter(batch)
                if e.name == "hf" and hf_threads and torch.get_num_threads() != hf_threads:
                    e.report["torch_threads_restored_from"] = torch.get_num_threads()
                    torch.set_num_threads(hf_threads)
                time.sleep(2)  # vLLM's worker polls for 1 s after its last step before it goes idle
                s = sampling if mode != "greedy" else sampling.model_copy(update={"n": 1, "temperature": 0.0})
                result = measure(e.engine, batch, s, e.meter(others))
                runs[e.name].setdefault(mode, []).append(result)
                if e.name == "hf" and mode == "base" and baselines and "baselines" not in e.report:
                    # The hf-only comparisons, on the base model, right after the run they explain.
                    print(f"[rollout benchmark] hf baselines ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
                    e.report["baselines"] = hf_baselines(e.engine, batch, sampling, result | {"_stats": e.hf().last_stats})
        for e in live:
            e.report |= {mode: rate(r) for mode, r in runs[e.name].items()}
    finally:
        for e in reversed(live):
            e.shutdown()
    return {e.name: e.report for e in live}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--engines", default="hf,vllm", help="comma-separated, run in this order: hf, vllm")
    ap.add_argument("--modes", default="base,adapter", help="comma-separated: base, adapter, greedy")
    ap.add_argument("--seed", default="none",
                    help="Sampling.seed for both engines, or none (the default: see the note on vLLM and seeds)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the modes this many times (ABBA order throughout)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-b-std", type=float, default=1e-3, help="std of the random LoRA B matrices")
    ap.add_argument("--vllm-bind", default="all", help="all | auto | a VLLM_CPU_OMP_THREADS_BIND value")
    ap.add_argument("--kv-cache-gb", type=float, default=2.0, help="vLLM's KV cache (rollout.kv_cache_gb)")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--no-baselines", action="store_true", help="skip the hf-only comparisons")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := (set(engines) - {"hf", "vllm"}) | (set(modes) - {"base", "adapter", "greedy"}):
        raise SystemExit(f"unknown engine or mode: {sorted(unknown)}")

    started = uptime()
    model_cfg = ModelSection(name=args.model)
    tokenizer = load_tokenizer(model_cfg)
    batch = prompts(tokenizer, args.prompts)
    seed = None if args.seed.lower() == "none" else int(args.seed)
    sampling = Sampling(n=args.n, max_new_tokens=args.tokens, temperature=1.0, seed=seed)
    adapters = (random_adapter(model_cfg, args.lora_rank, args.lora_b_std, versions=3)
                if {"adapter", "greedy"} & set(modes) else [])
    report: dict[str, Any] = {
        "benchmark": "rollout engines", "model": args.model, "cores": os.cpu_count(),
        "prompts": args.prompts, "mean_prompt_tokens": round(sum(map(len, batch)) / len(batch), 1),
        "n": args.n, "max_new_tokens": args.tokens, "temperature": 1.0, "seed": seed, "modes": modes,
        "adapter": {"rank": args.lora_rank, "alpha": 2 * args.lora_rank, "targets": LORA_TARGETS, "b_std": args.lora_b_std}
        if adapters else None,
        "order": engines, "uptime_start": started, "engines": {},
    }
    configs = {"hf": RolloutSection(engine="hf"),
               "vllm": RolloutSection(engine="vllm", kv_cache_gb=args.kv_cache_gb, max_model_len=args.max_model_len,
                                     max_lora_rank=args.lora_rank)}
    if "vllm" in engines:
        report["vllm_threads"] = vllm_binding(args.vllm_bind)
    report["engines"] = compare(engines, model_cfg, configs, batch, sampling, modes, args.rounds, adapters,
                                baselines="hf" in engines and "base" in modes and not args.no_baselines)
    if {"hf", "vllm"} <= set(report["engines"]):
        hf, vllm = report["engines"]["hf"], report["engines"]["vllm"]
        report["vllm_over_hf"] = {mode: round(vllm[mode]["tokens_per_s"] / hf[mode]["tokens_per_s"], 2)
                                  for mode in ("base", "adapter", "greedy") if mode in hf and mode in vllm}
        key = "adapter" if "adapter" in report["vllm_over_hf"] else next(iter(report["vllm_over_hf"]), None)
        if key:
            report["faster_engine"] = {"mode": key, "engine": "vllm" if report["vllm_over_hf"][key] > 1 else "hf"}
        # Only the runs during which everyone else used under QUIET cores: a shared machine's busy spells
        # slow the hf engine's many small parallel regions far more than vLLM's, so they bias the ratio.
        def quiet_rate(entry: dict) -> Optional[float]:
            runs = [r for r in entry.get("runs", [entry]) if r["other_load_cores"] < QUIET]
            return sum(r["tokens"] for r in runs) / sum(r["seconds"] for r in runs) if runs else None

        quiet = {mode: (quiet_rate(vllm[mode]), quiet_rate(hf[mode])) for mode in report["vllm_over_hf"]}
        report["vllm_over_hf_quiet_runs"] = {mode: round(v / h, 2) if v and h else None for mode, (v, h) in quiet.items()}
        # Per CPU second of the engine's own processes: less sensitive to a shared machine's load.
        report["vllm_over_hf_per_cpu_s"] = {mode: round(vllm[mode]["tokens_per_cpu_s"] / hf[mode]["tokens_per_cpu_s"], 2)
                                            for mode in report["vllm_over_hf"]}
    report["uptime_end"] = uptime()
    print_report(report, args.out)


if __name__ == "__main__":
    main()
