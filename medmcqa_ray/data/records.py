"""The row schemas that cross stage boundaries, defined once (Arrow, since rows travel as Ray Data blocks).

`NORMALISED` is the download stage's working record: a processed row plus its bookkeeping (split,
source, status, reason, raw text), so kept and quarantined rows flow through one Dataset and the
manifest can count both.
"""

from __future__ import annotations

import pyarrow as pa

# Reason codes: a quarantined row carries exactly one. Documented in docs/data.md's quarantine table.
QUARANTINE_REASONS = {
    "not_an_object": "the row is not a JSON object / record",
    "invalid_field_type": "a field holds a list, object or other non-text value",
    "missing_question": "no question text after cleaning",
    "question_too_long": "question longer than data.max_question_chars",
    "image_only_option": "an option is only an <img> tag (the image is not in the release)",
    "too_few_options": "fewer than four usable options (missing, empty or not text)",
    "identical_options": "all four options are the same text",
    "cop_invalid": "cop is not an integer",
    "cop_out_of_range": "cop outside the layout's range (0..3 hf, 1..4 original)",
    "duplicate_id": "an earlier row of the same split has this id (the first one wins)",
}

# Flags mark kept rows that are usable but odd, so filters and analyses can find them.
FLAGS = {
    "duplicate_options": "two or three options share a text",
    "image_dependent": "the question refers to an image that the release does not carry",
    "placeholder_explanation": "explanation was a placeholder ('.', 'A'); treated as none",
    "no_explanation": "explanation missing",
    "bare_letter_options": "options are just the letters A-D",
    "subject_unknown": "subject_name missing or 'Unknown'",
    "topic_is_exam_tag": "topic_name holds an exam name or year, not a topic",
    "rt_repaired": "dropped 'rt' letters were restored ('aery' -> 'artery')",
    "generated_id": "the row had no id; one was derived from its content",
    "duplicate_id_across_splits": "another split holds a row with this id",
    "unlabelled": "no answer (test split, cop null or -1)",
}

PROCESSED = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer_index", pa.int64()),
        ("answer_label", pa.string()),
        ("explanation", pa.string()),
        ("subject", pa.string()),
        ("topic", pa.string()),
        ("choice_type", pa.string()),
        ("flags", pa.list_(pa.string())),
    ]
)

NORMALISED = pa.schema(
    list(PROCESSED)
    + [
        ("split", pa.string()),
        ("ordinal", pa.int64()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("cop_raw", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)

FORMATTED = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("completion", pa.string()),
        ("answer_label", pa.string()),
        ("explanation", pa.string()),
        ("subject", pa.string()),
        ("options", pa.list_(pa.string())),
        ("question", pa.string()),  # as normalised: lm-eval's prompt for log-likelihood scoring is built from it
    ]
)
FORMATTED_VERSION = "2"
"""Bumped when FORMATTED changes, so prep's cache key redoes folders written with the old columns."""

KEPT, QUARANTINED, LIMITED = "kept", "quarantined", "limited"
