"""Loading a config: YAML files overlaid in order, then `key.sub=value` overrides, validated once against
the schema; and showing one (secrets redacted, flattened for MLflow params)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medmcqa_ray.config.schema import Config
from medmcqa_ray.errors import ConfigError
from medmcqa_ray.redaction import redacted


def _deep_merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _apply_override(tree: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: is a value, so {dotted} cannot be set")
        node = child
    node[keys[-1]] = value


def load_config(files: list[str | Path] | None = None, overrides: list[str] | None = None) -> Config:
    """Overlay config files in order, apply overrides last, and validate. Raises ConfigError naming the key."""
    tree: dict[str, Any] = {}
    for f in files or []:
        tree = _deep_merge(tree, _read_yaml(Path(f)))
    for item in overrides or []:
        _apply_override(tree, item)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
    # Imported here, not at the top: the plan imports config.schema, and importing any module of this package
    # first runs its __init__, which imports this module, so a top-level import would meet a half-made plan.
    # The layers stay one way (pyproject.toml: config.loading > memory > models > config.schema).
    from medmcqa_ray.memory.check import check_memory

    try:
        check_memory(cfg)
    except ValueError as e:  # a plan over the card, or a model whose architecture cannot be read
        raise ConfigError(f"invalid config: {e}") from None
    return cfg


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # Validators already name the full key ("data.path: ..."); don't say it twice.
        named = not key or msg.startswith((key + ".", key + ":"))
        lines.append(msg if named else f"{key}: {msg}")
    return "invalid config: " + "; ".join(lines)


# -------------------------------------------------------------------------------------------- showing


def resolved_dict(cfg: Config) -> dict:
    """The resolved config as plain JSON types, secrets redacted: safe to print or log."""
    return redacted(cfg.model_dump(mode="json"))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"data": {"limit": 3}} -> {"data.limit": 3}: the form MLflow params and overrides use."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
