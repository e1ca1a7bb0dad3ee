"""The calls a Tracker makes of MLflow, typed: sent live (store.send), or kept as offline records while the
server is unreachable and replayed later (replay.py), the same records both ways. `kind` names each; an
offline record keeps it beside the call's other fields (`payload`), as it always has on disk."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter


class _Call(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRun(_Call):
    """Offline only: a run opened while the server was away (replay creates it, under its parent)."""

    kind: Literal["start"] = "start"
    tags: dict[str, str]


class LogMetrics(_Call):
    kind: Literal["metrics"] = "metrics"
    metrics: dict[str, float]
    step: Optional[int]
    ts: int
    """Milliseconds since the epoch, when the values were logged (not when they reach the store)."""


class LogParams(_Call):
    kind: Literal["params"] = "params"
    params: dict[str, str]
    """Values clipped to MLflow's length limit."""


class SetTags(_Call):
    kind: Literal["tags"] = "tags"
    tags: dict[str, str]


class LogDict(_Call):
    kind: Literal["dict"] = "dict"
    obj: JsonValue
    name: str


class LogArtifact(_Call):
    kind: Literal["artifact"] = "artifact"
    path: str
    """A file or a folder; offline, a copy made at the time (checkpoints are overwritten before a replay)."""
    artifact_path: Optional[str]


class LogTable(_Call):
    kind: Literal["table"] = "table"
    data: dict[str, list[JsonValue]]
    artifact_file: str


class LogModel(_Call):
    """The adapter's pyfunc folder, logged and registered as a new version of `name`."""

    kind: Literal["model"] = "model"
    path: str
    artifact_path: str
    name: str
    tags: dict[str, str]


class MoveBest(_Call):
    """An accuracy on the registered version holding `adapter_sha`, and alias `best` moved among the versions
    scored on the same evaluation set (`set_key`; evaluation/eval_set.py)."""

    kind: Literal["best"] = "best"
    name: str
    adapter_sha: str
    set_key: str
    set_n: int
    set_text: str
    accuracy: float
    ci95: list[float]


class EndRun(_Call):
    kind: Literal["end"] = "end"
    status: str
    end_time: int


TrackingCall = Annotated[Union[StartRun, LogMetrics, LogParams, SetTags, LogDict, LogArtifact, LogTable, LogModel,
                               MoveBest, EndRun], Field(discriminator="kind")]
_CALL: TypeAdapter[TrackingCall] = TypeAdapter(TrackingCall)


class OfflineRecord(BaseModel):
    """One line of `tracking/offline/<run>.jsonl`: a call, the run it belongs to, and when it was made."""

    model_config = ConfigDict(extra="forbid")

    run: str
    name: str
    parent: Optional[str]
    kind: str
    payload: dict[str, JsonValue]
    experiment: str
    timestamp: float

    @staticmethod
    def of(call: TrackingCall, run: str, name: str, parent: Optional[str], experiment: str,
           timestamp: float) -> "OfflineRecord":
        return OfflineRecord(run=run, name=name, parent=parent, kind=call.kind, experiment=experiment,
                             payload=call.model_dump(mode="json", exclude={"kind"}), timestamp=timestamp)

    def call(self) -> TrackingCall:
        return _CALL.validate_python({"kind": self.kind, **self.payload})
