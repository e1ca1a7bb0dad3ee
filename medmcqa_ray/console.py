"""What reaches the terminal, and what only the log file gets.

A run prints the output folder, one progress bar per long stage, each stage's table and the final one
with the `mlflow ui` command, plus any warning. Everything else (our own INFO lines, Ray's, Ray Data's
and MLflow's) goes to `<output_dir>/logs/<command>-<time>.log`; workers' output stays in Ray's session
logs (the run ends by naming both). `MEDMCQA_VERBOSE=1` shows it all on the terminal, workers included.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from tqdm import tqdm

VERBOSE_ENV = "MEDMCQA_VERBOSE"
# Libraries that give their logger a console handler of its own (propagate=False): the root's file
# handler never sees them unless they get one too.
OWN_HANDLERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_file: Optional[logging.Handler] = None


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
