"""Reading files: formats, layouts, split names, and malformed files (errors name the file and line)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmcqa_ray.data.dataset_plan import detect_layout
from medmcqa_ray.data.download import normalise_task
from medmcqa_ray.data.records import KEPT, QUARANTINE_REASONS, QUARANTINED
from medmcqa_ray.data.sources import discover, plan_read_tasks, split_of
from medmcqa_ray.errors import DataFileError

from .test_normalise import GOOD


def read_all(path, chunk_bytes=64):
    files = discover(path, ["train", "validation", "test"])
    return [rec for t in plan_read_tasks(files, chunk_bytes) for rec in normalise_task(t)]


def test_split_names():
    from pathlib import Path

    assert split_of(Path("dev.json")) == "validation"
    assert split_of(Path("validation-00000-of-00001.parquet")) == "validation"
    assert split_of(Path("train.jsonl")) == "train"
    assert split_of(Path("rows.jsonl")) is None


def test_jsonl_json_array_and_parquet_read_the_same_rows(tmp_path):
    rows = [GOOD | {"id": f"q{i}"} for i in range(20)]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "c").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c" / "train.parquet", row_group_size=7)
    for sub in "abc":
        recs = read_all(tmp_path / sub)
        assert [r["id"] for r in recs] == [f"q{i}" for i in range(20)], sub
    # Small chunks split the JSONL file into many tasks; sources still give exact line numbers.
    jsonl = read_all(tmp_path / "a", chunk_bytes=50)
    assert [r["source"].rsplit(":", 1)[1] for r in jsonl] == [str(i) for i in range(1, 21)]


def test_truncated_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD | {"id": "q2"})[:40] + "\n")
    with pytest.raises(DataFileError, match=r"train\.jsonl:2: invalid JSON"):
        read_all(tmp_path)


def test_bad_json_array_and_non_utf8_and_bad_parquet(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "train.json").write_text('[\n{"id": 1},\n{"id": ')
    with pytest.raises(DataFileError, match=r"train\.json:3"):
        read_all(tmp_path / "x")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "dev.jsonl").write_bytes(b'{"id": "\xff\xfe"}\n')
    with pytest.raises(DataFileError, match=r"dev\.jsonl:1"):
        read_all(tmp_path / "y")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "test.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataFileError, match=r"test\.parquet"):
        read_all(tmp_path / "z")


def test_empty_file_reads_no_rows_and_unknown_split_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    assert read_all(tmp_path) == []
    (tmp_path / "misc.jsonl").write_text("{}\n")
    with pytest.raises(DataFileError, match="misc.jsonl: cannot tell which split"):
        read_all(tmp_path)


def test_layout_detection():
    assert detect_layout({"train.jsonl": {0, 1, 2, 3}, "test.jsonl": {-1}}) == "hf"
    assert detect_layout({"train.json": {1, 2, 3, 4}, "test.json": {None}}) == "original"
    with pytest.raises(DataFileError, match="set data.layout=hf or data.layout=original"):
        detect_layout({"train.jsonl": {1, 2, 3}})
    with pytest.raises(DataFileError, match="files disagree"):
        detect_layout({"a.jsonl": {0, 1}, "b.json": {4}})
    with pytest.raises(DataFileError, match="neither layout"):
        detect_layout({"a.jsonl": {0, 4}})


line = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries({}, optional={k: st.one_of(st.none(), st.integers(-2, 5), st.text(max_size=20)) for k in GOOD})),
    st.builds(lambda r: json.dumps(GOOD | r), st.dictionaries(st.sampled_from(sorted(GOOD)), st.one_of(st.none(), st.text(max_size=20), st.integers(-3, 6)))),
    st.just(""), st.just("   "), st.just("[1, 2]"), st.just("null"), st.just('"text"'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=30), truncate=st.booleans(), chunk=st.integers(16, 400))
def test_any_file_is_fully_accounted_or_rejected_naming_the_line(tmp_path_factory, lines, truncate, chunk):
    folder = tmp_path_factory.mktemp("fuzz")
    text = "\n".join(lines)
    if truncate and text.rstrip().endswith("}"):
        text = text.rstrip()[:-1]
    (folder / "train.jsonl").write_text(text)
    try:
        recs = read_all(folder, chunk_bytes=chunk)
    except DataFileError as e:
        assert "train.jsonl:" in str(e)
        return
    assert len(recs) == sum(1 for ln in text.split("\n") if ln.strip())
    for r in recs:
        assert r["status"] in (KEPT, QUARANTINED)
        assert r["status"] == KEPT or r["reason"] in QUARANTINE_REASONS


def test_plan_finds_duplicates_cross_split_ids_and_limit_cutoffs():
    from medmcqa_ray.data.dataset_plan import KEY_COLUMNS, plan_finalise

    rows = [  # split, ordinal, id, file, cop, status
        ("train", 5, "a", "f", 0, KEPT), ("train", 1, "a", "f", 7, KEPT),  # ordinal 1 is out of range: 5 wins
        ("train", 9, "a", "f", 1, KEPT), ("train", 2, "b", "f", 2, KEPT), ("train", 3, "c", "f", 3, QUARANTINED),
        ("validation", 4, "b", "g", None, KEPT), ("train", 8, "d", "f", -1, KEPT),
    ]
    keys = pa.Table.from_pylist([dict(zip(KEY_COLUMNS, r)) for r in rows])
    plan = plan_finalise(keys, "auto", limit=2)
    assert plan.layout == "hf"
    assert plan.duplicate_ordinals == {9}
    assert plan.cross_split_ids == {"b"}
    assert plan.limit_cutoffs == {"train": 5}  # train's valid unique rows by ordinal: 2 (b), 5 (a), 8 (d)
