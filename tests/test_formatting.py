from medmcqa_ray.config import FormatSection, Markers
from medmcqa_ray.formatting import extract_answer, format_row, generation_prompt, truncate_reasoning

OPTS = ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]
ROW = {"id": "x1", "question": "Scurvy is caused by deficiency of:", "options": OPTS, "answer_index": 2,
       "answer_label": "C", "explanation": "Scurvy results from a lack of vitamin C.", "subject": "Biochemistry"}


def test_prompt_and_target_rendering_is_stable():
    """Regression: the exact text every trainer and evaluator sees. Change it on purpose only."""
    out = format_row(ROW, FormatSection())
    assert out["prompt"][0]["role"] == "system"
    assert "<start_working_out>" in out["prompt"][0]["content"] and "</SOLUTION>" in out["prompt"][0]["content"]
    assert out["prompt"][1] == {
        "role": "user",
        "content": "Scurvy is caused by deficiency of:\n\nA. Vitamin A\nB. Vitamin B12\nC. Vitamin C\nD. Vitamin D\n\n"
        "Choose the single correct option and answer with its letter.",
    }
    assert out["completion"] == (
        "<start_working_out>Scurvy results from a lack of vitamin C.<end_working_out><SOLUTION>C</SOLUTION>"
    )
    assert extract_answer(out["completion"], OPTS).letter == "C"


def test_target_without_explanation_states_the_answer_and_unlabelled_rows_have_none():
    out = format_row(ROW | {"explanation": None}, FormatSection())
    assert "The correct option is C: Vitamin C." in out["completion"]
    assert format_row(ROW | {"answer_index": None, "answer_label": None}, FormatSection())["completion"] is None


def test_custom_markers_flow_into_prompt_target_and_extraction():
    m = Markers(reasoning_start="<think>", reasoning_end="</think>", solution_start="<answer>", solution_end="</answer>")
    cfg = FormatSection(markers=m)
    out = format_row(ROW, cfg)
    assert out["completion"].startswith("<think>") and out["completion"].endswith("<answer>C</answer>")
    assert "<think>" in out["prompt"][0]["content"]
    assert extract_answer(out["completion"], OPTS, m).letter == "C"


def test_generation_prompt_ends_with_reasoning_marker():
    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    text = generation_prompt(format_row(ROW, FormatSection())["prompt"], Tok(), Markers())
    assert text.endswith("<assistant><start_working_out>")


def test_truncation_prefers_sentence_then_word_boundaries():
    text = "First sentence here. Second sentence is longer than the limit allows for sure."
    assert truncate_reasoning(text, 36) == "First sentence here."
    assert truncate_reasoning("word " * 30, 42).endswith(" ...")
    assert truncate_reasoning("short", 100) == "short"


CASES = [
    ("<start_working_out>because<end_working_out><SOLUTION>B</SOLUTION>", "B", "tag"),
    ("<SOLUTION> c </SOLUTION>", "C", "tag"),  # lowercase, padded
    ("<SOLUTION>B. Vitamin B12</SOLUTION>", "B", "tag"),
    ("<SOLUTION>(D)</SOLUTION>", "D", "tag"),
    ("<SOLUTION>Option A</SOLUTION>", "A", "tag"),
    ("<SOLUTION>Vitamin C</SOLUTION>", "C", "tag"),  # option text inside the tag
    ("<SOLUTION>E</SOLUTION>", None, None),  # only A-D count
    ("<SOLUTION>a beta blocker</SOLUTION>", None, None),  # a lowercase word is not the letter a
    ("<SOLUTION>B", None, None),  # never closed: a truncated generation is not an answer
    ("<SOLUTION>E</SOLUTION><SOLUTION>D</SOLUTION>", "D", "tag"),  # first usable tag
    ("reasoning<end_working_out>Answer: C", "C", "answer_phrase"),
    ("Ans. is 'a' i.e. Vitamin A", "A", "answer_phrase"),  # MedMCQA's own explanation style
    ("The answer is (B).", "B", "answer_phrase"),
    ("The answer is a vitamin.", None, None),
    ("Option A is wrong because ...<end_working_out>\nD\n", "D", "lone_letter"),
    ("it must be vitamin b12", "B", "option_text"),
    ("Vitamin A or Vitamin C", None, None),  # two options named: no guess
    ("", None, None),
    (None, None, None),
    ("\u200b\u00a0<SOLUTION>\u200bA\u200b</SOLUTION>", "A", "tag"),  # zero-width junk around the letter
]


def test_extraction_hard_cases():
    for text, letter, method in CASES:
        got = extract_answer(text, OPTS)
        assert (got.letter, got.method) == (letter, method), text


def test_extraction_survives_huge_input():
    text = "x" * 20000 + "<SOLUTION>A</SOLUTION>"
    assert extract_answer(text, OPTS).letter == "A"
