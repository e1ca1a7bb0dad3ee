"""What reaches the terminal, and what only the log file gets.

A run prints the output folder, one progress bar per long stage, each stage's table and the final one
with the `mlflow ui` command, plus any warning. Everything else (our own INFO lines, Ray's, Ray Data's
and MLflow's) goes to `<output_dir>/logs/<command>-<time>.log`; workers' output stays in Ray's session
logs (the run ends by naming both). `MEDMCQA_VERBOSE=1` shows it all on the terminal, workers included.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

VERBOSE_ENV = "MEDMCQA_VERBOSE"
# Libraries that give their logger a console handler of its own (propagate=False): the root's file
# handler never sees them unless they get one too.
OWN_HANDLERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_file: Optional[logging.FileHandler] = None
T = TypeVar("T")
CURSOR_UP = "\x1b[A"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def console_level() -> int:
    return logging.INFO if verbose() else logging.WARNING


def _is_console(handler: logging.Handler) -> bool:
    # Not only sys.stderr itself: MLflow's handler writes through a stream object that wraps it.
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def start(folder: Path, command: str) -> Path:
    """Log everything at INFO into `folder`/<command>-<time>.log (layout.logs), the console only at
    console_level()."""
    global _file
    path = Path(folder) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    _file = logging.FileHandler(path)
    _file.setFormatter(logging.Formatter(FORMAT))
    # Not DEBUG: Ray Data's logger passes DEBUG to the handlers we give it, among them multi-kilobyte
    # operator metrics every few seconds (its own ray-data.log keeps them).
    _file.setLevel(logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_file)
    quiet_libraries()
    return path


class _Expected(logging.Filter):
    """Warnings about what we chose on purpose (Ray Data's bars are off away from a terminal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def quiet_libraries() -> None:
    """Give the libraries' own loggers our file and hold their console handlers to console_level().
    Called again once Ray Data or MLflow is imported: each sets its loggers up then."""
    for name in ("",) + OWN_HANDLERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _is_console(handler):
                handler.setLevel(console_level())
                if not verbose() and not any(isinstance(f, _Expected) for f in handler.filters):
                    handler.addFilter(_Expected())
        if name and _file is not None and not logger.propagate and _file not in logger.handlers:
            logger.addHandler(_file)


class _LogLines(io.TextIOBase):
    """A text stream whose lines become INFO records; of a progress bar that tqdm redraws, only its last state
    (the 100% line)."""

    def __init__(self, logger: logging.Logger):
        self._logger = logger
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def finish(self) -> None:
        self._log(self._pending)
        self._pending = ""

    def _log(self, line: str) -> None:
        # A bar redraws its line after a carriage return; one below another bar (ours, on the terminal, while a
        # library's runs) goes a line down, draws, and moves the cursor back up: those lines are redrawn later.
        line = line.rsplit("\r", 1)[-1]
        if line.strip() and not line.endswith(CURSOR_UP):
            self._logger.info(line.strip())


@contextmanager
def stderr_to_log(logger: logging.Logger) -> Iterator[None]:
    """What Python code prints on sys.stderr in this block (libraries' tqdm bars, warnings) goes to the log as
    lines of `logger`, not to the terminal: for a one-off step whose libraries draw bars that no switch of theirs
    turns off. Logging's own handlers keep the streams they hold."""
    if verbose():
        yield
        return
    lines = _LogLines(logger)
    try:
        with redirect_stderr(lines):
            yield
    finally:
        lines.finish()


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """File descriptor 2 points at the log file in this block, so what native code writes there (Ray's C++ core
    worker, which no Python stream or logger sees) lands in the log, not on the terminal. What Python writes on
    stderr meanwhile (a warning, through logging's console handler) lands there too: keep the block narrow. A
    no-op before start() (tests, Ray workers) or with MEDMCQA_VERBOSE."""
    if _file is None or _file.stream is None or verbose():
        yield
        return
    sys.stderr.flush()
    _file.flush()
    terminal = os.dup(2)
    os.dup2(_file.stream.fileno(), 2)  # the log is opened for appending, so both writers add to its end
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)


def first_with_native_stderr_to_log(items: Iterable[T]) -> Iterator[T]:
    """`items`, with native_stderr_to_log() around the wait for the first one only (when Ray Data starts a
    dataset's execution and its actor pool)."""
    it = iter(items)
    with native_stderr_to_log():
        try:
            first = next(it)
        except StopIteration:
            return
    yield first
    yield from it


def bar(desc: str, total: int, unit: str) -> "tqdm":
    """A tqdm bar on stderr; away from a terminal (CI, `ray job logs`) it redraws every 30 s, not 10 times a second."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)


def ray_logs() -> Optional[str]:
    """Where this Ray session keeps the workers' output, when Ray runs on this machine."""
    try:
        import ray

        node = ray._private.worker._global_node  # the public API has no session-dir getter
        return str(Path(node.get_session_dir_path()) / "logs") if node is not None else None
    except Exception:  # noqa: BLE001 - only ever used for a hint
        return None
