"""The selection split: labelled train rows set aside for choosing (sweep trials, checkpoints), so that
validation and test are only ever reported. Chosen by the rows' ids alone: the same ids whatever the
file order, the read tasks or the machine, and never an id another split holds."""

from __future__ import annotations

import hashlib
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from medmcqa_ray.data.records import KEPT
from medmcqa_ray.errors import StageError

FROM_SPLIT = "train"
AUTO_SHARE, AUTO_MAX = 0.05, 500


class SelectionSplit(BaseModel):
    """The download manifest's record of the split: how many rows, from where, and which (by a hash)."""

    model_config = ConfigDict(extra="forbid")
    rows: int
    from_split: str = FROM_SPLIT
    ids_sha256: str
    rule: str = (f"the labelled {FROM_SPLIT} rows with the smallest sha256(id), leaving out ids another split holds; "
                 f"data.selection_rows rows, or {AUTO_SHARE:.0%} of them (at most {AUTO_MAX}) when unset")


def _rank(row_id: str) -> str:
    return hashlib.sha256(row_id.encode()).hexdigest()


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def choose_selection(rows: pa.Table, selection_rows: Optional[int]) -> list[str]:
    """Ids of the selection split, from the download's bookkeeping columns (split, id, status,
    answer_index). [] when data.selection_rows=0 or there is no train split."""
    if selection_rows == 0:
        return []
    kept = rows.filter(pc.equal(rows["status"], KEPT))
    is_train = pc.equal(kept["split"], FROM_SPLIT)
    others = set(kept.filter(pc.invert(is_train))["id"].to_pylist())
    train = kept.filter(pc.and_(is_train, pc.is_valid(kept["answer_index"])))
    if train.num_rows == 0:
        return []
    candidates = [i for i in train["id"].to_pylist() if i not in others]
    if selection_rows is None:  # a share, at least one row, and never the last row to train on
        return sorted(candidates, key=_rank)[:min(AUTO_MAX, max(1, round(AUTO_SHARE * len(candidates))), len(candidates) - 1)]
    wanted = selection_rows
    if wanted >= len(candidates):
        raise StageError(f"data.selection_rows={selection_rows}: the selection split would take {wanted} of the "
                         f"{len(candidates)} labelled {FROM_SPLIT} rows that no other split holds, leaving nothing "
                         "to train on; lower it")
    return sorted(candidates, key=_rank)[:wanted]
