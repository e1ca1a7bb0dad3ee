"""10,000 fuzzed rows through download and prep: every row is kept or quarantined with a reason, and
the manifest adds up (read = kept + quarantined, per reason, per file written)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medmcqa_ray.data.records import QUARANTINE_REASONS
from medmcqa_ray.pipeline import run_stage

from ..data.test_normalise import GOOD

pytestmark = pytest.mark.slow
ROWS = 10_000


def junk(rng: random.Random):
    return rng.choice([
        None, True, 0, -1, 7, 2.5, float("inf"), "", " ", "\u200b", "<img src='x.png'>", "A" * rng.choice([10, 5000, 30000]),
        "Caf\u00e9 \U0001f600 \u0645\u0631\u062d\u0628\u0627 \x00\x07", "  spaced   out  ", ["a", "b"], {"k": 1}, "2", "c",
    ])


def fuzzed_row(rng: random.Random, i: int):
    kind = rng.random()
    if kind < 0.05:  # not an object at all
        return rng.choice([[1, 2], "a string", 3, None])
    row = GOOD | {"id": f"q{i}" if rng.random() > 0.05 else f"q{rng.randrange(max(i, 1))}",  # some duplicate ids
                  "question": f"Question {i}: {rng.choice(['which vitamin?', 'Which nerve?', 'What is seen in image?'])}",
                  "cop": rng.randrange(4)}
    for _ in range(rng.choice([0, 0, 1, 2, 4])):  # damage some fields
        key = rng.choice(sorted(GOOD))
        if rng.random() < 0.2:
            row.pop(key, None)
        else:
            row[key] = junk(rng)
    if rng.random() < 0.05:
        row["opa"] = row["opb"] = row["opc"] = row["opd"] = "same"
    return row


def test_ten_thousand_fuzzed_rows_are_all_accounted_for(ray_session, make_config, tmp_path):
    rng = random.Random(0)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "train.jsonl", "w") as f:
        for i in range(ROWS):
            f.write(json.dumps(fuzzed_row(rng, i)) + "\n")
    cfg = make_config("data.source=local", f"data.path={src}", "data.layout=hf")
    download = run_stage("download", cfg)
    prep = run_stage("prep", cfg)

    c = download.splits["train"]
    assert c.read == ROWS and c.limited == 0
    assert c.kept + c.quarantined + c.selected == ROWS and c.selected > 0
    assert sum(c.reasons.values()) == c.quarantined and set(c.reasons) <= set(QUARANTINE_REASONS)
    assert 0 < c.kept < ROWS and len(c.reasons) >= 5  # the fuzz reached many reasons, and kept rows
    out = Path(cfg.output_dir) / "data"
    ids = pq.ParquetDataset(out / "processed" / "train").read().column("id").to_pylist()
    ids += pq.ParquetDataset(out / "processed" / "selection").read().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == c.kept + c.selected
    quarantine = [json.loads(line) for line in (out / "quarantine" / "train.jsonl").read_text().splitlines()]
    assert len(quarantine) == c.quarantined and all(q["reason"] in QUARANTINE_REASONS and "raw" in q for q in quarantine)
    # Every input line is in exactly one place: a kept row (unique ids, in train or selection) or a quarantined line.
    lines = {int(q["source"].rsplit(":", 1)[1]) for q in quarantine}
    assert len(lines) == c.quarantined
    assert prep.splits["train"].rows == c.kept
    assert pq.ParquetDataset(out / "formatted" / "train").read().num_rows == c.kept
