"""Decisions that need every row at once: the `cop` layout, duplicate ids, and data.limit.

The download stage reads and normalises rows in parallel, then gathers a few small columns (split,
ordinal, id, file, cop) to the driver, decides here, and applies the decisions in a second parallel
pass (`normalise.finalise_row`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from medmcqa_ray.data.normalise import cop_to_index
from medmcqa_ray.data.records import KEPT
from medmcqa_ray.errors import DataFileError

KEY_COLUMNS = ["split", "ordinal", "id", "source_file", "cop_raw", "status"]


@dataclass
class FinalisePlan:
    layout: str
    duplicate_ordinals: set = field(default_factory=set)
    cross_split_ids: set = field(default_factory=set)
    limit_cutoffs: dict = field(default_factory=dict)  # split -> last ordinal kept (None: no limit)

    def kwargs(self, split: str) -> dict:
        return {"layout": self.layout, "duplicate_ordinals": self.duplicate_ordinals,
                "cross_split_ids": self.cross_split_ids, "limit_cutoff": self.limit_cutoffs.get(split)}


def detect_layout(cops_by_file: dict[str, set]) -> str:
    """'hf' if cop uses 0 or -1, 'original' if it uses 4; refuse to guess when nothing tells them apart."""
    verdicts: dict[str, str] = {}
    for path, cops in cops_by_file.items():
        hf, original = bool(cops & {0, -1}), 4 in cops
        if hf and original:
            raise DataFileError(f"{path}: cop holds both 0/-1 and 4, so it is neither layout; fix the file")
        if hf or original:
            verdicts[path] = "hf" if hf else "original"
    kinds = set(verdicts.values())
    if len(kinds) > 1:
        example = {k: next(p for p, v in verdicts.items() if v == k) for k in kinds}
        raise DataFileError(
            f"files disagree on the cop layout: {example['hf']} is 0-based (hf), {example['original']} is "
            "1-based (original); read them separately or set data.layout"
        )
    if not kinds:
        raise DataFileError(
            f"cannot tell whether cop is 0-based (Hugging Face layout) or 1-based (original release) in "
            f"{sorted(cops_by_file)}: no cop is 0, -1 or 4; set data.layout=hf or data.layout=original"
        )
    return kinds.pop()


def plan_finalise(keys: pa.Table, layout: str, limit: Optional[int]) -> FinalisePlan:
    cols = keys.select(KEY_COLUMNS).to_pydict()
    rows = sorted(zip(*(cols[c] for c in KEY_COLUMNS)), key=lambda r: r[1])
    rows = [r for r in rows if r[5] == KEPT]
    if layout == "auto":
        cops_by_file: dict[str, set] = defaultdict(set)
        for split, _, _, source_file, cop, _ in rows:
            cops_by_file[source_file].add(cop)
        layout = detect_layout(cops_by_file) if rows else "hf"
    plan = FinalisePlan(layout)
    seen: dict[str, set] = defaultdict(set)
    splits_of_id: dict[str, set] = defaultdict(set)
    kept_count: dict[str, int] = defaultdict(int)
    for split, ordinal, row_id, _, cop, _ in rows:
        if not cop_to_index(cop, layout)[1]:
            continue
        if row_id in seen[split]:
            plan.duplicate_ordinals.add(ordinal)
            continue
        seen[split].add(row_id)
        splits_of_id[row_id].add(split)
        kept_count[split] += 1
        if limit is not None and kept_count[split] == limit:
            plan.limit_cutoffs[split] = ordinal
    plan.cross_split_ids = {i for i, s in splits_of_id.items() if len(s) > 1}
    return plan
