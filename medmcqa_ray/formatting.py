"""Prompt rendering, SFT targets and answer extraction: the one definition every stage imports.

The generation prompt is the chat template's generation prompt followed by the reasoning start marker,
so a completion is `reasoning <end> <SOLUTION>X</SOLUTION>`. The SFT target starts with the reasoning
start marker too: SFT teaches the model to open its reasoning, GRPO samples after it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, NamedTuple, Optional, Sequence

from medmcqa_ray.config import FormatSection, Markers

LETTERS = "ABCD"
DEFAULT_MARKERS = Markers()

# One str.translate table (C speed; a per-character Python loop cost 0.3 ms a row): control and
# format characters (U+0001, bidi marks, zero-width spaces, BOM, soft hyphen) dropped, newline and tab kept, ligatures expanded.
_TRANSLATE = {
    c: None for c in range(0x10000)
    if unicodedata.category(chr(c)) in ("Cc", "Cf") and chr(c) not in "\n\t"
} | {c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFB00, 0xFB07)}


def strip_invisible(text: str) -> str:
    """Drop control and zero-width characters (they split tokens and hide in copied text)."""
    return text.translate(_TRANSLATE)


def system_message(cfg: FormatSection) -> str:
    return cfg.system_prompt.format(**cfg.markers.model_dump())


def user_message(question: str, options: Sequence[str], cfg: FormatSection) -> str:
    lines = [question.strip(), ""]
    lines += [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    lines += ["", cfg.instruction]
    return "\n".join(lines)


def prompt_messages(question: str, options: Sequence[str], cfg: FormatSection) -> list[dict[str, str]]:
    """Chat messages for one question (system + user); the trainers and evaluators apply the template."""
    return [
        {"role": "system", "content": system_message(cfg)},
        {"role": "user", "content": user_message(question, options, cfg)},
    ]


def generation_prompt(messages: list[dict[str, str]], tokenizer: Any, markers: Markers) -> str:
    """The text a model continues: the chat template's generation prompt, then the reasoning start marker."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + markers.reasoning_start


def prompt_token_ids(text: str, tokenizer: Any) -> list[int]:
    """The token ids a rollout engine continues from. The template already holds any special tokens, so
    none are added; the learner scores exactly these ids, and vLLM gets them as they are (TokensPrompt)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt is empty after tokenisation: {text[:80]!r}")
    return ids


def truncate_reasoning(text: str, max_chars: int) -> str:
    """Cut at the last sentence end before max_chars, else at a word boundary, else hard."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    sentence_end = max(head.rfind(". "), head.rfind(".\n"))
    if sentence_end >= max_chars // 2:
        return head[: sentence_end + 1]
    space = head.rfind(" ")
    return (head[:space] if space >= max_chars // 2 else head).rstrip() + " ..."


def reasoning_text(explanation: Optional[str], options: Sequence[str], answer_index: int, cfg: FormatSection) -> str:
    """The reasoning an SFT target teaches: the dataset's explanation, or a plain statement of the answer."""
    if explanation and explanation.strip():
        return truncate_reasoning(explanation.strip(), cfg.max_reasoning_chars)
    return f"The correct option is {LETTERS[answer_index]}: {options[answer_index]}."


def sft_target(reasoning: str, letter: str, markers: Markers) -> str:
    return (
        f"{markers.reasoning_start}{reasoning}{markers.reasoning_end}"
        f"{markers.solution_start}{letter}{markers.solution_end}"
    )


# ------------------------------------------------------------------------------------------- extraction


def is_well_formatted(completion: str, markers: Markers = DEFAULT_MARKERS) -> bool:
    """The exact format (the prompt already ends with the reasoning start marker): non-empty reasoning,
    the reasoning end marker, then exactly one solution tag holding one letter A-D, then nothing but
    whitespace. Evaluation's format compliance and the format_exact reward are this test."""
    m = markers
    completion = strip_invisible(completion)  # as extract_answer does: zero-width characters are not text
    if any(completion.count(x) != 1 for x in (m.reasoning_end, m.solution_start, m.solution_end)):
        return False
    if m.reasoning_start in completion:
        return False
    pattern = (r"\s*(?P<reasoning>.*?\S.*?)\s*" + re.escape(m.reasoning_end) + r"\s*" + re.escape(m.solution_start)
               + r"\s*[A-D]\s*" + re.escape(m.solution_end) + r"\s*")
    return re.fullmatch(pattern, completion, re.S) is not None


class Extraction(NamedTuple):
    letter: Optional[str]
    """"A".."D", or None when no answer could be read."""
    method: Optional[str]
    """Which rule found it: tag, answer_phrase, lone_letter, option_text (None when nothing did)."""


# Inside the solution tag: a lone letter in either case, "B. Vitamin C" / "(b) text", or "B text";
# never a lowercase word such as "a beta blocker".
_FRAGMENT_LETTER = re.compile(
    r"^\s*(?:(?i:option)\s+)?(?:[(\[]?([A-Da-d])[)\]]?\s*$|[(\[]?([A-Da-d])[).:\]]|([A-D])[\s,\-])"
)
# "Answer: B", "The answer is (C)", "Ans. is 'a'" (MedMCQA's own explanations); the letter is
# case-sensitive unless quoted, so "the answer is a drug" reads nothing.
_ANSWER_PHRASE = re.compile(
    r"(?i:\b(?:final\s+)?ans(?:wer)?\b\.?)\s*(?i:is\b)?\s*[:\-=]?\s*(?:(?i:option)\s+)?"
    r"(?:['\"(\[]([A-Da-d])['\")\]]|([A-D])(?![A-Za-z]))"
)
_LONE_LETTER = re.compile(r"^\s*[(\[]?([A-D])[)\].]?\s*$", re.M)


def _casefold_words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def _option_letter(text: str, options: Optional[Sequence[str]]) -> Optional[str]:
    """The letter of the one option whose text appears in `text` (None if none or several do)."""
    if not options:
        return None
    hay = f" {_casefold_words(text)} "
    hits = []
    for i, opt in enumerate(options):
        needle = _casefold_words(opt or "")
        if len(needle) >= 2 and f" {needle} " in hay:
            hits.append(i)
    # "Vitamin C" inside "Vitamin C deficiency" must not also count "C": keep the longest, unless tied.
    if len(hits) > 1:
        longest = max(len(options[i]) for i in hits)
        hits = [i for i in hits if len(options[i]) == longest]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def _fragment_letter(fragment: str, options: Optional[Sequence[str]]) -> Optional[str]:
    m = _FRAGMENT_LETTER.match(fragment)
    if m:
        return next(g for g in m.groups() if g).upper()
    return _option_letter(fragment, options)


def extract_answer(text: Optional[str], options: Optional[Sequence[str]] = None, markers: Markers = DEFAULT_MARKERS) -> Extraction:
    """Read the chosen letter from a completion: the solution tag first, then "Answer: X", then a line
    holding a lone letter, then the text of exactly one option. Only A-D count; a tag that is never
    closed is not an answer (a truncated generation is incorrect, not half-right)."""
    if not text:
        return Extraction(None, None)
    text = strip_invisible(text)
    tag = re.compile(re.escape(markers.solution_start) + r"(.*?)" + re.escape(markers.solution_end), re.S)
    for m in tag.finditer(text):
        letter = _fragment_letter(m.group(1), options)
        if letter:
            return Extraction(letter, "tag")
    # Fallbacks read the text after the reasoning when the model closed it: letters inside the
    # reasoning ("option A is wrong because ...") are not the answer.
    tail = text.split(markers.reasoning_end)[-1] if markers.reasoning_end in text else text
    tail = tag.sub(" ", tail)
    phrases = _ANSWER_PHRASE.findall(tail)
    if phrases:
        return Extraction("".join(phrases[-1]).upper(), "answer_phrase")
    lone = _LONE_LETTER.findall(tail)
    if lone:
        return Extraction(lone[-1], "lone_letter")
    letter = _option_letter(tail, options)
    return Extraction(letter, "option_text" if letter else None)


def is_correct(text: Optional[str], gold: Optional[str], options: Optional[Sequence[str]] = None,
               markers: Markers = DEFAULT_MARKERS) -> bool:
    """Whether a completion answers `gold`: the one definition of "correct" that the reward, evaluation
    and a sweep's validation use. An unlabelled row (gold not A-D) is never answered correctly."""
    return gold in tuple(LETTERS) and extract_answer(text, options, markers).letter == gold


def named_option(reasoning: str, options: Optional[Sequence[str]]) -> Optional[int]:
    """The index of the one option whose text the reasoning names (whole words, any case), else None: none
    named, or several (a short option such as "A" or "2" inside other words never counts)."""
    text = strip_invisible(reasoning).casefold()
    named = [i for i, opt in enumerate(options or ())
             if opt.strip() and re.search(r"(?<!\w)" + re.escape(opt.strip().casefold()) + r"(?!\w)", text)]
    return named[0] if len(named) == 1 else None


def reorder_options(row: dict, order: Sequence[int], cfg: FormatSection) -> dict:
    """A labelled formatted row asked with its options in `order` (`order[i]`: the index of the option shown
    as letter i): new prompt, options and gold letter. The SFT target is dropped, its letter being stale."""
    options = [row["options"][i] for i in order]
    gold = LETTERS[list(order).index(LETTERS.index(row["answer_label"]))]
    return row | {"options": options, "answer_label": gold, "completion": None,
                  "prompt": prompt_messages(row["question"], options, cfg)}


def format_row(row: dict, cfg: FormatSection) -> dict:
    """A processed row -> a formatted row (records.FORMATTED). Unlabelled rows get no SFT target."""
    index = row.get("answer_index")
    completion = None
    if index is not None:
        reasoning = reasoning_text(row.get("explanation"), row["options"], index, cfg)
        completion = sft_target(reasoning, LETTERS[index], cfg.markers)
    return {
        "id": row["id"],
        "prompt": prompt_messages(row["question"], row["options"], cfg),
        "completion": completion,
        "answer_label": row.get("answer_label"),
        "explanation": row.get("explanation"),
        "subject": row.get("subject"),
        "options": list(row["options"]),
        "question": row["question"],
    }
