"""One raw row in, one normalised record out: kept (maybe flagged) or quarantined with a reason.

Pure functions, no Ray: the download stage maps them over Ray Data blocks, the benchmark loops over
them in one process, and the property tests throw malformed rows at them directly.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Optional

from medmcqa_ray.data.records import KEPT, LIMITED, QUARANTINED
from medmcqa_ray.data.text import clean_block, clean_inline, has_image, repair_dropped_rt
from medmcqa_ray.formatting import LETTERS

OPTION_KEYS = ("opa", "opb", "opc", "opd")
_EXAM_TAG = re.compile(r"\b(AIIMS|NEET|AIPG|PGI|JIPMER|All India|FMGE|DNB|UPSC|COMEDK|PGMEE)\b|\b(19|20)\d{2}\b", re.I)
_IMAGE_REFERENCE = re.compile(
    r"\b(?:(?:is|are) shown|shown (?:below|here|above|in the)|(?:this|the (?:given|following|accompanying))"
    r" (?:image|picture|photo(?:graph)?|figure|radiograph|x-ray|specimen|slide|ecg|angiogram|ct)"
    r"|identify the (?:structure|lesion|instrument|organism|marked)|marked (?:structure|as|with)|labell?ed)\b",
    re.I,
)


_TWO_ALNUM = re.compile(r"[^\W_].*?[^\W_]", re.S)  # a placeholder explanation (".", "A") has fewer


class _BadType(Exception):
    pass


def as_text(value: Any) -> Optional[str]:
    """Strings pass; numbers become their text (an option "5" is fine); lists, dicts and others don't."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _BadType(type(value).__name__)


def parse_cop(value: Any) -> tuple[Optional[int], bool]:
    """(cop as int or None, valid). Accepts 2, 2.0, "2", "-1"; rejects True, 2.5, "b", 10**30."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, True
    cop: Optional[int] = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        cop = value
    elif isinstance(value, float) and value.is_integer():
        cop = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,6}\s*", value):
        cop = int(value)
    # Any small integer is "valid" here (range depends on the layout); huge ones would not fit int64.
    return (cop, True) if cop is not None and abs(cop) < 10**6 else (None, False)


def cop_to_index(cop: Optional[int], layout: str) -> tuple[Optional[int], bool]:
    """(answer_index 0..3 or None for unlabelled, in_range) under a layout ("hf" or "original")."""
    if cop is None or (layout == "hf" and cop == -1):
        return None, True
    index = cop if layout == "hf" else cop - 1
    return (index, True) if 0 <= index <= 3 else (None, False)


def _base(raw: Any, split: str, source: str, source_file: str, ordinal: int) -> dict:
    try:
        raw_text = json.dumps(raw, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        raw_text = repr(raw)
    return {
        "id": None, "question": None, "options": None, "answer_index": None, "answer_label": None,
        "explanation": None, "subject": None, "topic": None, "choice_type": None, "flags": [],
        "split": split, "ordinal": ordinal, "source": source, "source_file": source_file,
        "cop_raw": None, "status": KEPT, "reason": None, "detail": None, "raw": raw_text,
    }


def _quarantine(rec: dict, reason: str, detail: str) -> dict:
    rec.update(status=QUARANTINED, reason=reason, detail=detail)
    return rec


def _explanation(raw: dict, flags: list[str], repair_rt: bool) -> Optional[str]:
    try:
        text = as_text(raw.get("exp"))
    except _BadType:
        text = None
    if text is None or not text.strip():
        flags.append("no_explanation")
        return None
    text = clean_block(text)
    if not _TWO_ALNUM.search(text):
        flags.append("placeholder_explanation")
        return None
    if repair_rt:
        text, fixed = repair_dropped_rt(text)
        if fixed and "rt_repaired" not in flags:
            flags.append("rt_repaired")
    return text


def normalise_row(
    raw: Any, *, split: str, source: str, source_file: str = "", ordinal: int = 0,
    max_question_chars: int = 4000, repair_rt: bool = True, layout: Optional[str] = None,
) -> dict:
    """Clean one raw MedMCQA row. Never raises: a row that cannot serve comes back quarantined.
    With the layout known up front, the answer is resolved here; otherwise `finalise_row` does it."""
    rec = _base(raw, split, source, source_file, ordinal)
    if not isinstance(raw, dict):
        return _quarantine(rec, "not_an_object", f"row is a {type(raw).__name__}")
    flags: list[str] = rec["flags"]
    try:
        question = as_text(raw.get("question"))
    except _BadType as e:
        return _quarantine(rec, "invalid_field_type", f"question is a {e}")
    if question is not None and has_image(question):
        flags.append("image_dependent")
    question = clean_inline(question or "")
    if not question:
        return _quarantine(rec, "missing_question", "question is missing or empty")
    if len(question) > max_question_chars:
        return _quarantine(rec, "question_too_long", f"{len(question)} chars > data.max_question_chars")

    options: list[str] = []
    unusable: list[str] = []
    images: list[str] = []
    for key in OPTION_KEYS:
        try:
            value = as_text(raw.get(key))
        except _BadType:
            value = None
        text = clean_inline(value or "")
        if not text:
            (images if value and has_image(value) else unusable).append(key)
        options.append(text)
    if images:
        return _quarantine(rec, "image_only_option", f"{', '.join(images)} only an image")
    if unusable:
        return _quarantine(rec, "too_few_options", f"{', '.join(unusable)} missing, empty or not text")
    folded = [o.casefold() for o in options]
    if len(set(folded)) == 1:
        return _quarantine(rec, "identical_options", f"all four options are {options[0][:60]!r}")
    if len(set(folded)) < 4:
        flags.append("duplicate_options")
    if folded == ["a", "b", "c", "d"]:
        flags.append("bare_letter_options")

    cop, valid = parse_cop(raw.get("cop"))
    if not valid:
        return _quarantine(rec, "cop_invalid", f"cop is {raw.get('cop')!r}")
    rec["cop_raw"] = cop

    try:
        row_id = as_text(raw.get("id"))
        subject, topic, choice = (as_text(raw.get(k)) for k in ("subject_name", "topic_name", "choice_type"))
    except _BadType as e:
        return _quarantine(rec, "invalid_field_type", f"id/subject/topic/choice_type is a {e}")
    row_id = clean_inline(row_id or "")
    if not row_id:
        row_id = "gen-" + hashlib.sha1("\x1f".join([question, *options]).encode()).hexdigest()[:24]
        flags.append("generated_id")

    if repair_rt:
        question, q_fixed = repair_dropped_rt(question)
        fixed_options = [repair_dropped_rt(o) for o in options]
        options = [o for o, _ in fixed_options]
        if q_fixed or any(f for _, f in fixed_options):
            flags.append("rt_repaired")
    if "image_dependent" not in flags and _IMAGE_REFERENCE.search(question):
        flags.append("image_dependent")
    subject = clean_inline(subject or "") or "Unknown"
    if subject.casefold() == "unknown":
        flags.append("subject_unknown")
    topic = clean_inline(topic or "") or None
    if topic and _EXAM_TAG.search(topic):
        flags.append("topic_is_exam_tag")

    rec.update(
        id=row_id, question=question, options=options, subject=subject, topic=topic,
        choice_type=clean_inline(choice or "") or None,
        explanation=_explanation(raw, flags, repair_rt),
    )
    return _resolve_answer(rec, layout) if layout else rec


def _resolve_answer(rec: dict, layout: str) -> dict:
    index, in_range = cop_to_index(rec["cop_raw"], layout)
    if not in_range:
        return _quarantine(rec, "cop_out_of_range", f"cop {rec['cop_raw']} outside the {layout} layout's range")
    if index is None and "unlabelled" not in rec["flags"]:
        rec["flags"] = [*rec["flags"], "unlabelled"]
    rec.update(answer_index=index, answer_label=None if index is None else LETTERS[index])
    return rec


def finalise_row(rec: dict, layout: str, duplicate_ordinals: set, cross_split_ids: set, limit_cutoff: Optional[int]) -> dict:
    """Apply what needs the whole dataset: the cop layout (idempotent), duplicate ids, and data.limit."""
    if rec["status"] != KEPT:
        return rec
    rec = _resolve_answer(rec, layout)
    if rec["status"] != KEPT:
        return rec
    if rec["ordinal"] in duplicate_ordinals:
        return _quarantine(rec, "duplicate_id", f"id {rec['id']} seen earlier in this split")
    if rec["id"] in cross_split_ids:
        rec["flags"] = [*rec["flags"], "duplicate_id_across_splits"]
    if limit_cutoff is not None and rec["ordinal"] > limit_cutoff:
        rec["status"] = LIMITED
    return rec
