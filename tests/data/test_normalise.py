"""Normalisation of single rows: every oddity of the real data, and malformed rows from hypothesis."""

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from medmcqa_ray.data.normalise import finalise_row, normalise_row
from medmcqa_ray.data.records import FLAGS, KEPT, NORMALISED, QUARANTINE_REASONS, QUARANTINED

GOOD = {"id": "q1", "question": "Scurvy is caused by deficiency of:", "opa": "Vitamin A", "opb": "Vitamin B12",
        "opc": "Vitamin C", "opd": "Vitamin D", "cop": 2, "choice_type": "single",
        "exp": "Ans. is 'c' i.e. vitamin C", "subject_name": "Biochemistry", "topic_name": "Vitamins"}


def norm(**changes):
    row = {k: v for k, v in (GOOD | changes).items() if v is not ...}
    return normalise_row(row, split="train", source="t.jsonl:1")


def test_good_row_is_kept_clean():
    rec = norm()
    assert rec["status"] == KEPT and rec["flags"] == []
    assert rec["options"] == ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]
    fin = finalise_row(rec, "hf", set(), set(), None)
    assert (fin["answer_index"], fin["answer_label"]) == (2, "C")
    assert finalise_row(norm(), "original", set(), set(), None)["answer_label"] == "B"


def test_text_cleaning_keeps_wording():
    rec = norm(question="Which\tis\ntrue\u200b\u00a0about <b>this</b>\x01 \ufb01nding &amp; pH < 7?",
               exp="Line one\u00a0 here.\n\n\nLine two<br>three")
    assert rec["question"] == "Which is true about this finding & pH < 7?"
    assert rec["explanation"] == "Line one here.\nLine two\nthree"


def test_options_that_look_like_tags_are_text():
    rec = norm(opa="<0.9", opb="<0.6", opc=">0.9", opd=">0.6")
    assert rec["status"] == KEPT and rec["options"] == ["<0.9", "<0.6", ">0.9", ">0.6"]


def test_quarantine_reasons():
    img = '<img style="max-width: 100%" src=" />'
    cases = {
        "missing_question": norm(question=...),
        "invalid_field_type": norm(question={"text": "x"}),
        "question_too_long": norm(question="x" * 5000),
        "image_only_option": norm(opa=img, opb=img, opc=img, opd=img),
        "too_few_options": norm(opd="   "),
        "identical_options": norm(opa="Drug", opb="drug", opc="Drug", opd="DRUG"),
        "cop_invalid": norm(cop="b"),
        "not_an_object": normalise_row([1, 2], split="train", source="s"),
    }
    for reason, rec in cases.items():
        assert rec["status"] == QUARANTINED and rec["reason"] == reason, (reason, rec["detail"])
        assert reason in QUARANTINE_REASONS and rec["raw"]
    out_of_range = finalise_row(norm(cop=4), "hf", set(), set(), None)
    assert out_of_range["reason"] == "cop_out_of_range"
    dup = finalise_row(norm(), "hf", {0}, set(), None)
    assert dup["reason"] == "duplicate_id"


def test_flags_for_kept_oddities():
    assert "duplicate_options" in norm(opb="Vitamin A")["flags"]
    assert "bare_letter_options" in norm(opa="A", opb="B", opc="C", opd="D")["flags"]
    assert "image_dependent" in norm(question="Identify the structure marked in the image shown")["flags"]
    assert "image_dependent" in norm(question='These ECG changes are seen in <img src=" />')["flags"]
    placeholder = norm(exp=".")
    assert "placeholder_explanation" in placeholder["flags"] and placeholder["explanation"] is None
    assert "no_explanation" in norm(exp=None)["flags"]
    assert "subject_unknown" in norm(subject_name="Unknown")["flags"]
    assert "topic_is_exam_tag" in norm(topic_name="AIIMS 2018")["flags"]
    rt = norm(question="Which aery supplies the hea?", exp="The impoant aery")
    assert rt["question"] == "Which artery supplies the heart?" and "rt_repaired" in rt["flags"]
    gen = norm(id=None)
    assert gen["id"].startswith("gen-") and "generated_id" in gen["flags"]
    unl = finalise_row(norm(cop=-1), "hf", set(), set(), None)
    assert unl["status"] == KEPT and unl["answer_index"] is None and "unlabelled" in unl["flags"]
    assert finalise_row(norm(cop=None), "original", set(), set(), None)["answer_label"] is None
    for rec in (placeholder, rt, gen, unl):
        assert set(rec["flags"]) <= set(FLAGS)


def test_optional_fields_may_be_absent():
    rec = norm(exp=..., subject_name=..., topic_name=..., choice_type=...)
    assert rec["status"] == KEPT and rec["subject"] == "Unknown" and rec["topic"] is None


def test_cop_forms():
    for cop, label in [(2, "C"), (2.0, "C"), ("2", "C"), (" 1 ", "B")]:
        assert finalise_row(norm(cop=cop), "hf", set(), set(), None)["answer_label"] == label
    for bad in [True, 2.5, [2], "two"]:
        assert norm(cop=bad)["reason"] == "cop_invalid"


def test_limit_marks_rows_after_cutoff():
    rec = normalise_row(GOOD, split="train", source="s", ordinal=10)
    assert finalise_row(dict(rec), "hf", set(), set(), 9)["status"] == "limited"
    assert finalise_row(dict(rec), "hf", set(), set(), 10)["status"] == KEPT


junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=50),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=30000),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
row_strategy = st.one_of(
    st.fixed_dictionaries({}, optional={k: junk for k in GOOD}),
    st.builds(lambda changes: GOOD | changes, st.dictionaries(st.sampled_from(sorted(GOOD)), junk, max_size=4)),
    junk,
)


@settings(max_examples=300, deadline=None)
@given(row_strategy)
def test_any_row_is_kept_or_quarantined_with_a_reason(raw):
    rec = normalise_row(raw, split="train", source="f.jsonl:3")
    assert rec["status"] in (KEPT, QUARANTINED)
    if rec["status"] == QUARANTINED:
        assert rec["reason"] in QUARANTINE_REASONS and rec["detail"]
        assert isinstance(rec["raw"], str) and rec["raw"]  # the raw row travels to the quarantine file
    else:
        assert rec["question"] and len(rec["options"]) == 4 and all(rec["options"])
        assert len(rec["question"]) <= 4000
    fin = finalise_row(rec, "hf", set(), set(), None)
    pa.Table.from_pylist([fin], schema=NORMALISED)  # every record fits the Arrow schema


def test_known_layout_resolves_the_answer_in_the_first_pass_and_finalise_agrees():
    early = normalise_row(GOOD | {"cop": 7}, split="train", source="s", layout="hf")
    assert early["reason"] == "cop_out_of_range"
    test_row = normalise_row(GOOD | {"cop": -1}, split="test", source="s", layout="hf")
    assert test_row["answer_index"] is None and test_row["flags"] == ["unlabelled"]
    again = finalise_row(dict(test_row), "hf", set(), set(), None)
    assert again["flags"] == ["unlabelled"]  # finalising twice adds nothing
    row = normalise_row(GOOD, split="train", source="s", layout="original")
    assert row["answer_label"] == "B" == finalise_row(dict(row), "original", set(), set(), None)["answer_label"]
