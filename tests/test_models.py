"""Model loading: the embedded model's one-off build from its GGUF."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medmcqa_ray.config import ModelSection
from medmcqa_ray.models import local_model_path

# Converting the GGUF takes about half a minute here, a minute with the imports.
pytestmark = pytest.mark.slow


def test_building_the_embedded_model_from_its_gguf_shows_one_bar_of_ours(tmp_path, capfd, caplog):
    cfg = ModelSection(name="embedded:smollm2-135m-instruct", cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="medmcqa_ray.models"):
        path = Path(local_model_path(cfg))
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()

    terminal = capfd.readouterr()
    # transformers' bars (its GGUF de-quantisation draws one with tqdm itself) reach only the log, as
    # their last line each; the terminal shows our bar, which ends at 1/1.
    for library_bar in ("GGUF", "Loading weights", "Writing model shards"):
        assert library_bar not in terminal.err + terminal.out, library_bar
    assert "build embedded:smollm2-135m-instruct (once): 100%" in terminal.err
    converting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Converting and de-quantizing")]
    assert len(converting) == 1 and "272/272" in converting[0], converting
