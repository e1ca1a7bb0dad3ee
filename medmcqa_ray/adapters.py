"""LoRA adapters as (PEFT config dict, tensors): read from a PEFT folder, or taken from a live model.
This is the form adapter updates take to the rollout actors (tensors through the object store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medmcqa_ray.errors import StageError


def read_adapter(path: Path) -> tuple[dict, dict[str, Any]]:
    """A saved PEFT adapter folder -> (adapter_config dict, state dict). Clear errors for what is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    config_file = path / "adapter_config.json"
    if not path.is_dir() or not config_file.is_file():
        raise StageError(f"adapter {path} not found (expected a PEFT folder with adapter_config.json)")
    weights_file = path / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise StageError(f"adapter {path} has no adapter_model.safetensors")
    return json.loads(config_file.read_text()), load_file(str(weights_file))


def adapter_from_model(model: Any) -> tuple[dict, dict[str, Any]]:
    """The LoRA tensors of a live PEFT model (no base weights), detached and on CPU."""
    from peft import get_peft_model_state_dict

    config = model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    weights = {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(model).items()}
    return config, weights


def adapter_checksum(weights: dict[str, Any]) -> str:
    """sha256 over the tensors in key order: equal exactly when two adapters hold the same values."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()
