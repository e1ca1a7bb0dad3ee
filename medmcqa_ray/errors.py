"""The errors a user is meant to read: each says what is wrong and where, without a traceback."""

from __future__ import annotations


class MedmcqaError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero."""


class ConfigError(MedmcqaError):
    """A config file, key or value is wrong. The message names the key or the path."""


class DataFileError(MedmcqaError):
    """An input file cannot be read as data. The message names the file and, where known, the line."""


class HubUnavailableError(MedmcqaError):
    """The dataset hub cannot be reached (offline machine, HF_HUB_OFFLINE, no network)."""


class StageError(MedmcqaError):
    """A stage cannot run: its inputs are missing or empty, or its output cannot be written."""


def user_error(exc: BaseException) -> MedmcqaError | None:
    """Find our own error inside whatever Ray wrapped it in (RayTaskError, UserCodeException, ...)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MedmcqaError):
            # RayTaskError subclasses the user's exception type; its str() carries a traceback, so
            # prefer the original cause when Ray kept it.
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, MedmcqaError) else e
        # ActorDiedError carries the constructor's RayTaskError in its args, not as a cause; Ray Train's
        # WorkerGroupError each worker's exception in `worker_failures`.
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__,
                      *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException)),
                      *(getattr(e, "worker_failures", None) or {}).values()])
    return None
