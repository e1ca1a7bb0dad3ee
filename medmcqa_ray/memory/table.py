"""`medmcqa-ray memory`'s table: components down, phases across, GiB."""

from __future__ import annotations

from medmcqa_ray.memory.plan import KEYS, NOTES, GiB, MemoryPlan


def _gb(value: int) -> str:
    return f"{value / GiB:.2f}" if value else "-"


def render(plan: MemoryPlan) -> str:
    names = list(dict.fromkeys(k for p in plan.phases for k in p.components))
    width = max(len(n) for n in names + ["busier GPU"]) + 2
    head = f"{'GiB':<{width}}" + "".join(f"{p.name:>14}" for p in plan.phases)
    lines = [f"model {plan.model} ({plan.architecture}): {plan.parameters / 1e9:.3f} B parameters, {plan.dtype}, "
             f"LoRA {plan.lora_parameters / 1e6:.2f} M parameters, KV {plan.kv_bytes_per_token / 1024:.0f} KiB a token"
             + (f", KV cache {plan.kv_tokens:,} tokens" if plan.kv_tokens else ""), "", head]
    for name in names:
        lines.append(f"{name:<{width}}" + "".join(f"{_gb(p.components.get(name, 0)):>14}" for p in plan.phases))
    lines.append(f"{'total' if plan.colocated else 'busier GPU':<{width}}" + "".join(f"{_gb(p.peak(plan.colocated)):>14}" for p in plan.phases))
    if plan.device != "cuda":
        verdict = "runs on CPU: these are host-memory figures, nothing is checked"
    elif plan.capacity_gb is None:
        verdict = "card unknown (no GPU here, scaling.gpu_memory_gb unset): not checked"
    else:
        verdict = (f"fits: {plan.peak_gb:.2f} GiB" if plan.fits else f"DOES NOT FIT: {plan.peak_gb:.2f} GiB") + \
            f" at {plan.peak_phase} of {plan.capacity_gb:g} GiB ({plan.capacity_gb - plan.peak_gb:+.2f} GiB left)"
    lines += ["", f"peak: {verdict}"]
    if plan.sleep_level is not None:
        weights = plan.phase("generate").components["rollout.weights"]
        lines.append(f"vLLM sleep level {plan.sleep_level}: weights offloaded to host memory "
                     f"({weights / GiB:.1f} GiB pinned), KV cache dropped")
    lines += ["", "components:"] + [f"  {k:<14} {v}" for k, v in NOTES.items() if any(n.endswith("." + k) for n in names)]
    lines += ["", "keys that size each phase:"] + [f"  {k:<14} {v}" for k, v in KEYS.items()]
    return "\n".join(lines)
