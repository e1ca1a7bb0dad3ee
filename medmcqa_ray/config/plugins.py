"""User reward components named `package.module:function` in the config, imported and checked at load."""

from __future__ import annotations

import importlib
import inspect
from typing import Callable


def load_custom(path: str) -> Callable:
    """Import `package.module:function` and check it can be called TRL-style as fn(completions, **kwargs)."""
    if ":" not in path:
        raise ValueError(f"rewards.custom: {path!r} must look like package.module:function")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"rewards.custom: cannot import {module_name!r} for {path!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"rewards.custom: {path!r}: {module_name} has no function {attr!r}")
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    if not positional or not takes_kwargs:
        raise ValueError(f"rewards.custom: {path!r} must have the signature fn(completions, **kwargs) -> list[float]")
    return fn
