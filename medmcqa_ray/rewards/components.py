"""The built-in reward components, as pure functions of one completion. The completion is what follows
the generation prompt, which already ends with the reasoning start marker.

| component | value |
|---|---|
| format_exact | 1.0 when `formatting.is_well_formatted` (reasoning, end marker, exactly one solution tag with one letter A-D, nothing after), else 0.0 |
| format_approx | +0.5 for each of the reasoning end marker, solution start and solution end present exactly once, -0.5 for each missing or repeated (range -1.5..1.5) |
| correct | 1.0 when `formatting.extract_answer` reads the gold letter, else 0.0 (also 0.0 for an unlabelled row); the same extraction evaluation uses |
| similarity | cosine similarity of the reasoning to the row's explanation (similarity.py); NEUTRAL_SIMILARITY (0.0) without an explanation or without reasoning |
"""

from __future__ import annotations

from typing import Optional, Sequence

from medmcqa_ray.config import Markers
from medmcqa_ray.formatting import LETTERS, extract_answer, is_well_formatted

NEUTRAL_SIMILARITY = 0.0
"""Similarity for a row without an explanation (nothing to compare with) or a completion without reasoning:
no push either way."""


def format_exact(completion: str, markers: Markers) -> float:
    return 1.0 if is_well_formatted(completion, markers) else 0.0


def format_approx(completion: str, markers: Markers) -> float:
    return sum(0.5 if completion.count(m) == 1 else -0.5
               for m in (markers.reasoning_end, markers.solution_start, markers.solution_end))


def correct(completion: str, gold: Optional[str], options: Optional[Sequence[str]], markers: Markers) -> float:
    if gold not in tuple(LETTERS):
        return 0.0
    return 1.0 if extract_answer(completion, options, markers).letter == gold else 0.0


def reasoning_of(completion: str, markers: Markers) -> str:
    """The reasoning block: text before the end marker (or before the first solution tag when the end
    marker is missing), without any stray markers."""
    text = completion.split(markers.reasoning_end)[0] if markers.reasoning_end in completion else completion
    text = text.split(markers.solution_start)[0]
    for m in (markers.reasoning_start, markers.reasoning_end, markers.solution_start, markers.solution_end):
        text = text.replace(m, " ")
    return text.strip()
