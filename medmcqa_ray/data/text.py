"""Text cleaning for MedMCQA fields: remove what breaks tokenisers and prompts, keep the wording.

Handles the oddities of the real MedMCQA release: HTML tags and entities, control
characters (U+0001), zero-width and non-breaking spaces, ligatures, tabs and newlines inside
questions, and the public copy's dropped "rt" letters ("aery", "hea", "impoant").
"""

from __future__ import annotations

import html
import re
import unicodedata

from medmcqa_ray.formatting import strip_invisible

# A real tag: "<" + a letter-led name. "pH < 7.2 and > 6" and "<0.9" are text, not tags.
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_IMG = re.compile(r"<img\b[^>]*>", re.I)
_BREAK_TAGS = re.compile(r"<(?:br|p|/p|div|/div|li)\b[^>]*>", re.I)
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace but newline (tabs, nbsp, thin spaces)
_NEWLINES = re.compile(r"\s*\n\s*")

# Words whose "rt" the public copy dropped. Built from the correct spellings so the list reads as
# English; a corrupted form that is itself a word or abbreviation ("pa", "sho", "ove") is left alone.
_RT_WORDS = """
artery arteries arterial arteriole arterioles arteriolar arteritis arteriovenous arteriosclerosis
heart hearts heartburn important importance importantly portal portion portions support supports
supportive supported start started starts starting certain certainly report reported reports
reporting partial partially particle particles particular particularly hypertrophy hypertrophic
hypertension hypertensive aorta aortic cortex cortical cortisol cortico corticosteroid
corticosteroids vertebra vertebrae vertebral fertility infertility fertile fertilization
insertion inserted inverted converted shortness shortening shorter shortest quarter quarters
articular artificial artifact assertion exertion exertional department
mortality mortal portable shortly tortuous partner pertussis abortion
""".split()
_RT_BLOCKLIST = {"pa", "sho", "sta", "repo"}
_RT_REPAIR = {w.replace("rt", ""): w for w in _RT_WORDS if w.replace("rt", "") not in _RT_BLOCKLIST}
_RT_KEYS = frozenset(_RT_REPAIR)
_WORD = re.compile(r"\b[A-Za-z]{2,}\b")


def has_image(text: str) -> bool:
    return bool(_IMG.search(text))


def strip_html(text: str) -> str:
    text = _BREAK_TAGS.sub("\n", text)
    text = _TAG.sub(" ", text)
    return html.unescape(text)


def _match_case(word: str, fixed: str) -> str:
    if word.isupper():
        return fixed.upper()
    if word[:1].isupper():
        return fixed[:1].upper() + fixed[1:]
    return fixed


def repair_dropped_rt(text: str) -> tuple[str, bool]:
    """("hea aery", False) -> ("heart artery", True): undo the public copy's lost "rt" letters."""
    if not _RT_KEYS.intersection(_WORD.findall(text.lower())):
        return text, False
    fixed = False

    def swap(m: re.Match) -> str:
        nonlocal fixed
        word = m.group(0)
        repair = _RT_REPAIR.get(word.lower())
        if repair is None:
            return word
        fixed = True
        return _match_case(word, repair)

    # One pass over words with a dict lookup: an alternation of ~150 words was 40x slower on long text.
    return _WORD.sub(swap, text), fixed


def _base_clean(text: str) -> str:
    text = strip_html(text)
    text = strip_invisible(text)
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def clean_inline(text: str) -> str:
    """Questions and options: one line, single spaces."""
    return " ".join(_base_clean(text).split())


def clean_block(text: str) -> str:
    """Explanations: keep line breaks (they carry structure), collapse everything else."""
    text = _SPACES.sub(" ", _base_clean(text))
    return _NEWLINES.sub("\n", text).strip()
