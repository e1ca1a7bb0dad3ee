"""The built-in reward components, as pure functions of one completion. The completion is what follows
the generation prompt, which already ends with the reasoning start marker.

| component | value |
|---|---|
| format_exact | 1.0 when `formatting.is_well_formatted` (reasoning, end marker, exactly one solution tag with one letter A-D, nothing after), else 0.0 |
| format_approx | +0.5 for each of the reasoning end marker, solution start and solution end present exactly once, -0.5 for each missing or repeated (range -1.5..1.5) |
| correct | 1.0 when `formatting.is_correct` (the gold letter A-D, read by the same extraction evaluation uses), else 0.0 (also 0.0 for an unlabelled row) |
| consistent | 1.0 when the reasoning names exactly one option's text (`formatting.named_option`) and the letter given is that option's, else 0.0: the answer follows from the reasoning, right or wrong |
| similarity | cosine similarity of the reasoning to the row's explanation (similarity.py); NEUTRAL_SIMILARITY (0.0) without an explanation or without reasoning |

`PER_COMPLETION` holds all but similarity, one entry each; `similarity` embeds a whole batch at once, so the
Scorer runs it batch-wise (scoring.py). Names, weights and order: registry.py.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from medmcqa_ray import reward_names as R
from medmcqa_ray.config import Markers
from medmcqa_ray.formatting import LETTERS, extract_answer, is_correct, is_well_formatted, named_option

NEUTRAL_SIMILARITY = 0.0
"""Similarity for a row without an explanation (nothing to compare with) or a completion without reasoning:
no push either way."""


def format_exact(completion: str, markers: Markers) -> float:
    return 1.0 if is_well_formatted(completion, markers) else 0.0


def format_approx(completion: str, markers: Markers) -> float:
    return sum(0.5 if completion.count(m) == 1 else -0.5
               for m in (markers.reasoning_end, markers.solution_start, markers.solution_end))


def correct(completion: str, gold: Optional[str], options: Optional[Sequence[str]], markers: Markers) -> float:
    return float(is_correct(completion, gold, options, markers))


def consistent(completion: str, options: Optional[Sequence[str]], markers: Markers) -> float:
    # A small model can write the right fact and then a letter unrelated to it (SmolLM2-135M after SFT on the
    # synthetic sample: 51% of its reasoning names the gold option, 27% of its letters match what it named).
    # `correct` pays only the samples right by both; this pays every letter that follows from its own
    # reasoning, whatever the gold answer, so every sample that names an option carries the binding signal.
    named = named_option(reasoning_of(completion, markers), options)
    return float(named is not None and extract_answer(completion, options, markers).letter == LETTERS[named])


PerCompletion = Callable[[str, Optional[str], Optional[Sequence[str]], Markers], float]
"""fn(completion, gold letter, options, markers) -> score."""

PER_COMPLETION: dict[str, PerCompletion] = {
    R.FORMAT_EXACT: lambda completion, gold, options, markers: format_exact(completion, markers),
    R.FORMAT_APPROX: lambda completion, gold, options, markers: format_approx(completion, markers),
    R.CORRECT: correct,
    R.CONSISTENT: lambda completion, gold, options, markers: consistent(completion, options, markers),
}
"""The built-ins scored one completion at a time (all but similarity). A new one is one entry here plus its
name in reward_names.BUILTIN_REWARDS (which fixes its place in the order)."""


def reasoning_of(completion: str, markers: Markers) -> str:
    """The reasoning block: text before the end marker (or before the first solution tag when the end
    marker is missing), without any stray markers."""
    text = completion.split(markers.reasoning_end)[0] if markers.reasoning_end in completion else completion
    text = text.split(markers.solution_start)[0]
    for m in (markers.reasoning_start, markers.reasoning_end, markers.solution_start, markers.solution_end):
        text = text.replace(m, " ")
    return text.strip()
