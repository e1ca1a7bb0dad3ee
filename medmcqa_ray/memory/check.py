"""The plan against the card: the capacity (scaling.gpu_memory_gb, else the GPU this process sees) and the
load-time refusal of a config whose plan does not fit, naming the phase, its numbers and the keys that
size it, before Ray starts."""

from __future__ import annotations

from typing import Optional

from medmcqa_ray.config.schema import Config
from medmcqa_ray.memory.architecture import read_architecture
from medmcqa_ray.memory.plan import KEYS, GiB, MemoryPlan, plan_device, plan_memory


def uses_gpu(cfg: Config) -> bool:
    return plan_device(cfg) == "cuda"


def detected_gpu_gb() -> Optional[float]:
    """The first visible GPU's memory in GiB; None without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GiB


def capacity_gb(cfg: Config) -> Optional[float]:
    return cfg.scaling.gpu_memory_gb if cfg.scaling.gpu_memory_gb is not None else detected_gpu_gb()


def memory_plan(cfg: Config) -> MemoryPlan:
    """The config's plan, on the card it names or the one found here (ArchitectureError when the model's
    config.json cannot be read)."""
    return plan_memory(cfg, read_architecture(cfg.model), capacity_gb(cfg) if uses_gpu(cfg) else None)


def misfit(plan: MemoryPlan) -> str:
    """Why the plan does not fit its card, as one line ("" when it does or nothing is known)."""
    if plan.fits is not False:
        return ""
    phase = plan.phase(plan.peak_phase)
    largest = sorted(phase.components.items(), key=lambda kv: -kv[1])[:5]
    parts = ", ".join(f"{name} {value / GiB:.2f}" for name, value in largest if value)
    return (f"scaling.gpu_memory_gb: the GPU memory plan needs {plan.peak_gb:.2f} GiB in phase {plan.peak_phase} "
            f"({parts} GiB), more than the card's {plan.capacity_gb:g} GiB; sized by {KEYS[plan.peak_phase]} "
            "(`medmcqa-ray memory --config ...` prints the whole plan)")


def check_memory(cfg: Config) -> Optional[MemoryPlan]:
    """At load: a GPU config whose plan exceeds its card is refused (ValueError naming phase and keys)."""
    if not uses_gpu(cfg):
        return None
    configured = cfg.scaling.gpu_memory_gb
    detected = detected_gpu_gb() if configured is not None else None
    if configured is not None and detected is not None and configured > detected + 0.05:
        raise ValueError(f"scaling.gpu_memory_gb: {configured:g} GiB, but this machine's GPU has "
                         f"{detected:.1f} GiB; set it to the card's (or null to detect it)")
    plan = memory_plan(cfg)
    if why := misfit(plan):
        raise ValueError(why)
    return plan
