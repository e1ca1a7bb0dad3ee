"""The hub source is real `datasets.load_dataset` code; offline it fails fast and says what to do."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medmcqa_ray.data.sources import fetch_hub
from medmcqa_ray.errors import HubUnavailableError
from medmcqa_ray.pipeline import run_stage

from .test_normalise import GOOD


def test_unreachable_hub_fails_fast_with_advice(make_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config("data.source=hub")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="data.source=local .* or data.source=sample"):
        fetch_hub(cfg.data, cfg.output_dir)
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_hub_path_loads_a_dataset_repository_layout(ray_session, make_config, tmp_path):
    """A folder laid out like the hub repository (data/<split>-*.parquet) goes through load_dataset."""
    repo = tmp_path / "medmcqa-repo" / "data"
    repo.mkdir(parents=True)
    rows = {"train": [GOOD | {"id": f"t{i}", "cop": i % 4} for i in range(12)],
            "validation": [GOOD | {"id": f"v{i}", "cop": 1} for i in range(5)],
            "test": [GOOD | {"id": f"x{i}", "cop": -1, "exp": None} for i in range(3)]}
    for split, split_rows in rows.items():
        pq.write_table(pa.Table.from_pylist(split_rows), repo / f"{split}-00000-of-00001.parquet")
    cfg = make_config("data.source=hub", f"data.hub_id={repo.parent}", "data.hub_token=hf_dontleak")
    manifest = run_stage("download", cfg)
    assert {s: c.kept for s, c in manifest.splits.items()} == {"train": 11, "validation": 5, "test": 3}
    assert manifest.splits["train"].selected == 1  # 5% of 12, at least one
    assert manifest.source.kind == "hub" and manifest.source.layout == "hf"
    assert "hf_dontleak" not in json.dumps(manifest.as_dict())
