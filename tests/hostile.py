"""The hostile-input suite's one checker: run an ``atomfm`` command in this process as a user would, and
assert that a bad input ends in a clear refusal (the exit code, no traceback, the file or field named).

``atomfm(capsys, "data", "ingest", ...)`` returns what the command printed and its exit code; a command that
raises instead of returning a code fails the test with that traceback, which is what the user would have got.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from launch.cli import main

# A model small enough that a run of a few steps takes a second.
TINY = {
    "channels": 8,
    "num_layers": 1,
    "num_heads": 2,
    "attn_channels": 8,
    "ffn_channels": 8,
    "lmax": 1,
    "mmax": 1,
    "cutoff": 4.0,
    "num_rbf": 4,
    "radial_channels": 8,
}


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@contextmanager
def own_environment() -> Iterator[None]:
    """Undo what a command sets in ``os.environ`` (a training's process-group address, rank, world size)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(*args: object) -> int:
    """``atomfm ARGS`` in this process: its exit code (argparse's ``SystemExit`` included)."""
    with own_environment():
        try:
            return main([str(a) for a in args])
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1


def atomfm(capsys: pytest.CaptureFixture, *args: object) -> Outcome:
    """``atomfm ARGS`` in this process: its exit code and what it printed."""
    capsys.readouterr()
    code = run(*args)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_refused(outcome: Outcome, *named: object, code: int = 2) -> None:
    """The command stopped with ``code``, printed no traceback, and its message names each of ``named``."""
    text = outcome.err + outcome.out
    assert outcome.code == code, f"exit {outcome.code}, expected {code}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    for name in named:
        assert str(name) in outcome.err, f"{name!r} not named in:\n{outcome.err[-3000:]}"


def train_config(corpus: Path, out: Path, **sections: dict) -> Path:
    """A tiny single-process DDP run over ``corpus`` writing to ``out``; ``sections`` update the defaults."""
    cfg = {
        "run": {
            "out_dir": str(out),
            "max_steps": 4,
            "log_every": 1,
            "checkpoint_every": 2,
            "progress_bar": False,
        },
        "data": {
            "corpus": [str(corpus)],
            "max_atoms": 64,
            "cutoff": 4.0,
            "shuffle_buffer": 4,
            "num_workers": 0,
        },
        "model": {"size": "tiny", "overrides": dict(TINY), "conservative_forces": False},
        "tasks": {"energy": {}, "forces": {}},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "engine": "ddp",
        "logging": {"wandb": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# What an in-process training leaves in os.environ for its process group; a child must pick its own.
PROCESS_GROUP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def child_environment(root: Path) -> dict[str, str]:
    """The environment of a child ``atomfm`` process: one thread, no wandb, no inherited process group."""
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARIABLES}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "WANDB_MODE": "disabled"}
