"""A model's architecture, read offline from its `config.json`: the sizes the memory plan multiplies.

Where it looks, in order: the model folder (model.name is a local path), the copy bundled with this
package (architectures/, one file per model a shipped config names), the Hugging Face hub cache, and,
unless HF_HUB_OFFLINE is set, the hub itself (config.json alone, a few KB). An embedded model reads its
bundled copy (SmolLM2) or its built folder (the tiny test model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, PositiveInt

from medmcqa_ray.config.schema import ModelSection
from medmcqa_ray.errors import ConfigError

BUNDLED = Path(__file__).with_name("architectures")
EMBEDDED_SOURCES = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Embedded models whose architecture is a published model's (the GGUF holds the same shapes)."""


class ArchitectureError(ConfigError, ValueError):
    """No config.json could be read offline; the message names every place looked in (the CLI prints it
    as one line; ValueError, so the schema's load-time check reports it like any bad value)."""


class Architecture(BaseModel):
    """The decoder shapes that size weights, LoRA, activations and the KV cache."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: str
    hidden_size: PositiveInt
    intermediate_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: Optional[PositiveInt] = None
    head_dim: Optional[PositiveInt] = None
    vocab_size: PositiveInt
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    source: str = ""
    """The config.json file it was read from."""

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises q and k per head (a weight of head_dim each)."""
        return self.model_type.startswith("qwen3")

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection in one decoder layer, by its transformers name."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_size, self.kv_heads * self.head_size, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def parameters(self) -> int:
        """Exactly what transformers builds for a Llama/Qwen decoder (tests compare it on the meta device)."""
        shapes = self.module_shapes()
        per_layer = sum(a * b for a, b in shapes.values()) + 2 * self.hidden_size  # + the two RMSNorms
        if self.attention_bias:
            per_layer += shapes["q_proj"][1] + 2 * shapes["k_proj"][1] + (shapes["o_proj"][1] if self.model_type == "llama" else 0)
        if self.qk_norm:
            per_layer += 2 * self.head_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * per_layer + self.hidden_size  # + the final norm

    def lora_parameters(self, rank: int, targets: list[str]) -> int:
        """A LoRA adapter's parameters: rank x (in + out) for each targeted projection of every layer."""
        shapes = self.module_shapes()
        unknown = sorted(set(targets) - set(shapes))
        if unknown:
            raise ValueError(f"sft.lora.target_modules: the memory plan knows {sorted(shapes)}, not {unknown}")
        return self.num_hidden_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.num_hidden_layers * self.kv_heads * self.head_size * dtype_bytes


def bundled_file(model_id: str) -> Path:
    return BUNDLED / (model_id.replace("/", "--") + ".json")


def _from_file(path: Path) -> Architecture:
    raw = json.loads(path.read_text())
    raw = raw.get("text_config", raw)  # multimodal wrappers keep the decoder's sizes there
    return Architecture.model_validate({**raw, "source": str(path)})


def _hub_cache(model_id: str, revision: Optional[str]) -> Optional[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def read_architecture(model: ModelSection) -> Architecture:
    """The model's architecture, offline where it can be; ArchitectureError names where it looked."""
    name = model.name
    if name.startswith("embedded:") and name not in EMBEDDED_SOURCES:
        from medmcqa_ray.models import local_model_path  # builds the tiny test model once

        name = local_model_path(model)
    name = EMBEDDED_SOURCES.get(name, name)
    if Path(name).is_dir():
        path = Path(name) / "config.json"
        if path.is_file():
            return _from_file(path)
        raise ArchitectureError(f"model.name: {name} is a folder without config.json")
    bundled = bundled_file(name) if model.revision is None else None  # a pinned revision may differ from the bundle
    for found in (bundled, _hub_cache(name, model.revision)):
        if found is not None and found.is_file():
            return _from_file(found)
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    looked = ([str(bundled)] if bundled else []) + [f"the hub cache ({cache})"]
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
        try:
            from huggingface_hub import hf_hub_download

            token = model.hub_token.get_secret_value() if model.hub_token else None
            return _from_file(Path(hf_hub_download(name, "config.json", revision=model.revision, token=token)))
        except Exception as e:  # noqa: BLE001 - any hub failure: say where we looked
            looked.append(f"the hub ({type(e).__name__})")
    else:
        looked.append("not the hub (HF_HUB_OFFLINE=1)")
    raise ArchitectureError(f"model.name: cannot read {name}'s config.json offline; looked in " + ", ".join(looked)
                            + " (a local model folder, or one download of the model, makes it readable)")
