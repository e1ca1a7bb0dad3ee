"""The download and prep stages end to end on Ray Data, on the real MedMCQA rows in ../shared."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medmcqa_ray.data.records import FORMATTED, PROCESSED, QUARANTINE_REASONS
from medmcqa_ray.errors import DataFileError, StageError, user_error
from medmcqa_ray.formatting import extract_answer
from medmcqa_ray.pipeline import run_stage

from .test_normalise import GOOD

IMAGE_OPTION_IDS = {"11fa2143-7c6e-4564-921b-e42ce2eba143", "fadac01d-2d9c-40bd-bf98-d848bfcbb106",
                    "50169b7a-8bc6-4f88-b4a5-a9f139e5f09f", "cb106b78-807f-4d68-a698-5bdbe15d72d8",
                    "9b247da3-87f4-4a7a-a6be-a390040e2524", "1afa3537-bc04-47be-ba64-062cd41b086d"}
ANS_IS = re.compile(r"^Ans(?:wer)?\.?\s*(?:is)?\s*[:\-]?\s*['\"(]?([a-dA-D])['\")]?(?![A-Za-z])")


def processed(out: Path, split: str) -> list[dict]:
    return pq.ParquetDataset(out / "data" / "processed" / split).read().to_pylist()


def line_count(path: Path) -> int:
    return sum(1 for ln in path.read_text().splitlines() if ln.strip())


def data_stages(cfg) -> dict:
    """download then prep: what these tests are about (training and eval have their own tests)."""
    return {name: run_stage(name, cfg) for name in ("download", "prep")}


@pytest.fixture(scope="module")
def real_runs(ray_session, shared_medmcqa, tmp_path_factory):
    """Both real layouts through download + prep, once for the module."""
    from medmcqa_ray.config import load_config

    from ..conftest import REPO

    runs = {}
    for layout in ("hf", "original"):
        out = tmp_path_factory.mktemp(layout)
        cfg = load_config([REPO / "configs" / "ci.yaml"],
                          [f"output_dir={out}", "data.source=local", f"data.path={shared_medmcqa / layout}"])
        runs[layout] = (out, data_stages(cfg))
    return runs


@pytest.mark.slow
def test_every_input_row_is_accounted_for(real_runs, shared_medmcqa):
    files = {"hf": {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"},
             "original": {"train": "train.json", "validation": "dev.json", "test": "test.json"}}
    for layout, (out, _) in real_runs.items():
        manifest = json.loads((out / "data" / "manifest.json").read_text())
        assert manifest["source"]["layout"] == layout
        for split, name in files[layout].items():
            c = manifest["splits"][split]
            assert c["read"] == line_count(shared_medmcqa / layout / name)
            assert c["read"] == c["kept"] + c["quarantined"] + c["selected"] and c["limited"] == 0
            assert sum(c["reasons"].values()) == c["quarantined"]
            assert set(c["reasons"]) <= set(QUARANTINE_REASONS)
            assert len(processed(out, split)) == c["kept"]
            quarantine = (out / "data" / "quarantine" / f"{split}.jsonl").read_text().splitlines()
            assert len(quarantine) == c["quarantined"]
            for line in quarantine:
                q = json.loads(line)
                assert q["reason"] in QUARANTINE_REASONS and q["raw"]["id"] and re.search(r":\d+$", q["source"])
        assert pq.read_schema(next((out / "data" / "processed" / "train").glob("*.parquet"))).equals(PROCESSED)
        assert len(processed(out, "selection")) == manifest["splits"]["train"]["selected"] == manifest["selection"]["rows"]


@pytest.mark.slow
def test_the_selection_split_is_train_rows_no_trainer_sees_and_no_evaluated_split_holds(real_runs, tmp_path):
    """Sweeps and checkpoint choices rank on it, so validation stays a split that is only reported."""
    from medmcqa_ray.config import load_config
    from medmcqa_ray.data.selection import choose_selection
    from medmcqa_ray.training.grpo import training_prompts
    from medmcqa_ray.training.validation import selection_rows

    from ..conftest import REPO

    for layout, (out, manifests) in real_runs.items():
        cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}"])
        selection = {r["id"] for r in processed(out, "selection")}
        train = [r for r in processed(out, "train") if r["answer_index"] is not None]
        assert len(selection) == round(0.05 * (len(train) + len(selection))) > 50, layout  # data.selection_rows unset: 5%
        formatted = {s: set(pq.ParquetDataset(out / "data" / "formatted" / s).read().column("id").to_pylist())
                     for s in ("train", "validation", "test", "selection")}
        assert formatted["selection"] == selection
        assert not selection & formatted["train"] and not selection & formatted["validation"] and not selection & formatted["test"]
        assert not selection & {r["id"] for r in training_prompts(cfg)}  # GRPO's prompts (SFT reads the same train split)
        assert len(selection_rows(cfg, 1000)) == len(selection)  # what a sweep ranks on
        assert manifests["prep"].splits["selection"].rows == len(selection)
    # Chosen by id alone: another file order, the same rows.
    bookkeeping = pa.Table.from_pylist([{"split": "train", "id": f"q{i}", "status": "kept", "answer_index": 0} for i in range(40)])
    assert choose_selection(bookkeeping, 4) == choose_selection(bookkeeping.take(list(range(39, -1, -1))), 4)
    assert len(choose_selection(bookkeeping, None)) == 2 and choose_selection(bookkeeping, 0) == []
    with pytest.raises(StageError, match="data.selection_rows=40"):
        choose_selection(bookkeeping, 40)


@pytest.mark.slow
def test_image_only_and_identical_options_are_quarantined(real_runs):
    out, _ = real_runs["hf"]
    quarantined = {json.loads(ln)["raw"]["id"]: json.loads(ln)["reason"]
                   for ln in (out / "data" / "quarantine" / "train.jsonl").read_text().splitlines()}
    assert IMAGE_OPTION_IDS <= set(quarantined)
    assert {quarantined[i] for i in IMAGE_OPTION_IDS} == {"image_only_option"}
    kept_ids = {r["id"] for r in processed(out, "train")}
    assert not IMAGE_OPTION_IDS & kept_ids


@pytest.mark.slow
def test_layouts_read_with_the_right_base(real_runs):
    by_layout = {layout: {r["id"]: r for s in ("train", "validation") for r in processed(out, s)}
                 for layout, (out, _) in real_runs.items()}
    for rows in by_layout.values():
        # Explanations that name the answer ("Ans. is 'c'") agree with the gold letter, row by row.
        named = [(ANS_IS.match(r["explanation"] or ""), r["answer_label"]) for r in rows.values()]
        named = [(m.group(1).upper(), gold) for m, gold in named if m]
        assert len(named) > 100 and all(a == g for a, g in named)
    common = set(by_layout["hf"]) & set(by_layout["original"])
    assert len(common) > 1000
    assert all(by_layout["hf"][i]["answer_label"] == by_layout["original"][i]["answer_label"] for i in common)


@pytest.mark.slow
def test_test_split_is_kept_unlabelled_and_prep_output(real_runs):
    out, manifests = real_runs["original"]
    test_rows = processed(out, "test")
    assert len(test_rows) == 83 and all(r["answer_index"] is None and "unlabelled" in r["flags"] for r in test_rows)
    fmt = out / "data" / "formatted"
    assert manifests["prep"].splits["test"].with_target == 0
    train = pq.ParquetDataset(fmt / "train").read()
    assert train.schema.equals(FORMATTED)
    assert len(list((fmt / "train").glob("*.parquet"))) == 2  # format.num_shards in ci.yaml
    for row in train.slice(0, 200).to_pylist():
        assert row["completion"].startswith("<start_working_out>")
        assert extract_answer(row["completion"], row["options"]).letter == row["answer_label"]


def write_rows(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_duplicates_limit_and_missing_optional_fields(ray_session, make_config, tmp_path):
    bare = {k: v for k, v in GOOD.items() if k not in ("exp", "subject_name", "topic_name", "choice_type")}
    rows = [bare | {"id": f"q{i}", "cop": i % 4 + 1} for i in range(10)]
    rows.insert(3, bare | {"id": "q1", "question": "a later duplicate", "cop": 4})
    src = write_rows(tmp_path / "src", "train.json", rows)
    cfg = make_config("data.source=local", f"data.path={src}", "data.limit=6", "data.selection_rows=0")
    m = run_stage("download", cfg).splits["train"]
    assert (m.read, m.kept, m.quarantined, m.limited) == (11, 6, 1, 4)
    assert m.reasons == {"duplicate_id": 1}
    kept = processed(Path(cfg.output_dir), "train")
    assert [r["id"] for r in kept] == [f"q{i}" for i in range(6)]
    assert kept[1]["question"] == GOOD["question"]  # the first q1 won
    assert kept[0]["answer_label"] == "A"  # .json lines with cop 4 present -> original, 1-based


@pytest.mark.slow
def test_caching_skips_and_force_redoes(ray_session, make_config, caplog):
    cfg = make_config()
    first = data_stages(cfg)
    assert first["download"].source.name == "the synthetic sample"
    again = data_stages(cfg)
    assert again["download"].skipped and again["prep"].skipped
    forced = run_stage("download", cfg, force=True)
    assert not forced.skipped and forced.config_hash == first["download"].config_hash
    changed = make_config("format.num_shards=1")
    assert run_stage("download", changed).skipped  # data section unchanged
    prep = run_stage("prep", changed)
    assert not prep.skipped and prep.splits["train"].shards == 1


@pytest.mark.slow
def test_bad_inputs_give_clear_errors_and_keep_the_last_good_output(ray_session, make_config, tmp_path):
    src = write_rows(tmp_path / "src", "train.jsonl", [GOOD | {"id": f"q{i}"} for i in range(5)])
    cfg = make_config("data.source=local", f"data.path={src}", "data.layout=hf")
    good = run_stage("download", cfg)
    (src / "train.jsonl").write_text((src / "train.jsonl").read_text() + '{"id": "q9", "quest\n')
    with pytest.raises(Exception) as e:
        run_stage("download", cfg)
    err = user_error(e.value)
    assert isinstance(err, DataFileError) and "train.jsonl:6: invalid JSON" in str(err)
    manifest = json.loads((Path(cfg.output_dir) / "data" / "manifest.json").read_text())
    assert manifest["config_hash"] == good.config_hash and len(processed(Path(cfg.output_dir), "train")) == 4  # 1 in selection

    ambiguous = write_rows(tmp_path / "amb", "train.jsonl", [GOOD | {"id": f"q{i}", "cop": 1} for i in range(3)])
    with pytest.raises(Exception) as e:
        run_stage("download", make_config("data.source=local", f"data.path={ambiguous}"))
    assert "set data.layout=hf or data.layout=original" in str(user_error(e.value))

    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    with pytest.raises(StageError, match="cannot be written"):
        run_stage("download", make_config(output_dir=locked / "out"))


@pytest.mark.slow
def test_deleted_output_is_rebuilt_even_with_a_matching_manifest(ray_session, make_config):
    import shutil

    cfg = make_config("data.splits=[validation]")
    run_stage("download", cfg)
    shutil.rmtree(Path(cfg.output_dir) / "data" / "processed")
    again = run_stage("download", cfg)
    assert not again.skipped and len(processed(Path(cfg.output_dir), "validation")) == 321
