"""The synthetic sample: reproducible, labelled as ours, and validation phrasing unseen in train."""

import json

from collections import Counter

from medmcqa_ray.data.synthetic_sample import OUT_DIR, RELATIONS, fact_of, generate


def bundled(split):
    return [json.loads(ln) for ln in (OUT_DIR / f"{split}.jsonl").read_text().splitlines()]


def test_bundled_files_are_what_the_generator_writes():
    fresh = generate()
    assert bundled("train") == fresh["train"] and bundled("validation") == fresh["validation"]
    assert (len(fresh["train"]), len(fresh["validation"])) == (214, 321)


def test_validation_uses_unseen_templates_but_the_same_facts():
    train, val = bundled("train"), bundled("validation")
    train_questions = {r["question"] for r in train}
    assert not any(r["question"] in train_questions for r in val)
    for rel in RELATIONS:
        stem = rel.validation_template.split("{key}")[0][:25]
        assert not any(r["question"].startswith(stem) for r in train)
        assert not set(rel.more_validation_templates) & {rel.validation_template, *rel.train_templates}
    # Each fact is asked three times in validation (three unseen phrasings) and twice in train; the first
    # 107 validation questions are the one-phrasing set the earlier measurements used.
    assert set(Counter(fact_of(r) for r in val).values()) == {3}
    assert Counter(fact_of(r) for r in train) == Counter({fact: 2 for fact in map(fact_of, val)})
    assert len({fact_of(r) for r in val[:107]}) == 107
    # Every validation fact is taught in train: the answer text of each validation row appears as a
    # train answer for the same topic.
    train_answers = {(r["topic_name"], [r["opa"], r["opb"], r["opc"], r["opd"]][r["cop"]]) for r in train}
    for r in val:
        assert (r["topic_name"], [r["opa"], r["opb"], r["opc"], r["opd"]][r["cop"]]) in train_answers


def test_rows_are_in_medmcqa_schema_and_say_what_they_are():
    for r in bundled("train") + bundled("validation"):
        assert set(r) == {"id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp",
                          "subject_name", "topic_name"}
        options = [r["opa"], r["opb"], r["opc"], r["opd"]]
        assert len(set(options)) == 4 and 0 <= r["cop"] <= 3
        assert options[r["cop"]] in r["exp"]
        assert r["topic_name"].startswith("Offline sample:")
    # Answers are spread over the letters, so "always A" cannot score well.
    letters = [r["cop"] for r in bundled("validation")]
    assert max(letters.count(i) for i in range(4)) < 0.4 * len(letters)
