"""What the terminal gets and what only the log file gets, for output that does not come through logging."""

from __future__ import annotations

import logging
import os

import pytest
from tqdm import tqdm

from medmcqa_ray import console


@pytest.fixture
def log_file(tmp_path, monkeypatch):
    """A log file as console.start() makes it (without start()'s changes to the libraries' loggers)."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    path = tmp_path / "test.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(console.FORMAT))
    monkeypatch.setattr(console, "_file", handler)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield path
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()


@pytest.mark.parametrize("under_our_bar", [False, True])
def test_a_library_bar_becomes_its_last_line_in_the_log(log_file, capfd, under_our_bar):
    ours = console.bar("build", 1, "model") if under_our_bar else None  # the library's bar then draws one line down
    with console.stderr_to_log(logging.getLogger("test.library")):
        for _ in tqdm(range(3), desc="Converting", mininterval=0):
            pass
    if ours is not None:
        ours.close()
    assert "Converting" not in capfd.readouterr().err
    logged = log_file.read_text().splitlines()
    assert len(logged) == 1 and "INFO test.library: Converting: 100%" in logged[0] and "3/3" in logged[0], logged


def test_native_stderr_goes_to_the_log_for_the_first_item_only(log_file, capfd):
    def items():
        os.write(2, b"core_worker.cc: native warning\n")  # as Ray's C++ core writes it, past sys.stderr
        yield 1
        os.write(2, b"later native line\n")
        yield 2

    assert list(console.first_with_native_stderr_to_log(items())) == [1, 2]
    err = capfd.readouterr().err
    assert "core_worker.cc" not in err and "later native line" in err
    assert "core_worker.cc: native warning" in log_file.read_text()


def test_without_a_log_file_native_stderr_stays_on_the_terminal(capfd, monkeypatch):
    monkeypatch.setattr(console, "_file", None)  # as before console.start(): tests, Ray workers
    with console.native_stderr_to_log():
        os.write(2, b"native line\n")
    assert "native line" in capfd.readouterr().err
