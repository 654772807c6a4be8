"""Training processes a benchmark runs side by side (run as `python benchmarks/<script>.py`): one thread each,
started together so machine noise hits all of them, waited for together."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def launch(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in the repository root, one thread, stdout and stderr into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")
    return subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {}), **THREAD_ENV}, stdout=handle, stderr=subprocess.STDOUT
    )


def wait_all(processes: dict[str, tuple[subprocess.Popen, Path]]) -> dict[str, float]:
    """Wait for every process (seconds until each exited, from this call); on a failure, stop the others and
    raise with the failed one's log tail."""
    start, took, failed = time.perf_counter(), {}, None
    for name, (process, log) in processes.items():
        if failed is not None:
            process.terminate()
        if process.wait() != 0 and failed is None:
            failed = (name, process.returncode, log)
        took[name] = time.perf_counter() - start
    if failed is not None:
        name, code, log = failed
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{name} training exited with {code}; the end of {log}:\n{tail}")
    return took
