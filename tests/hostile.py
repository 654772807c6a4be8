"""The hostile-input suite's one checker: run an ``atomfm`` command in this process as a user would, and
assert that a bad input ends in a clear refusal (the exit code, no traceback, the file or field named).

``atomfm(capsys, "data", "ingest", ...)`` returns what the command printed and its exit code; a command that
raises instead of returning a code fails the test with that traceback, which is what the user would have got.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from launch.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def atomfm(capsys: pytest.CaptureFixture, *args: object) -> Outcome:
    """``atomfm ARGS`` in this process: its exit code (argparse's ``SystemExit`` included) and output."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_refused(outcome: Outcome, *named: object, code: int = 2) -> None:
    """The command stopped with ``code``, printed no traceback, and its message names each of ``named``."""
    text = outcome.err + outcome.out
    assert outcome.code == code, f"exit {outcome.code}, expected {code}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    for name in named:
        assert str(name) in outcome.err, f"{name!r} not named in:\n{outcome.err[-3000:]}"
