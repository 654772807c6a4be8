"""Run a benchmark step in its own process under a memory limit, and say how it ended.

A measurement that runs out of memory must not take the others with it: each runs in a child process,
which caps its own address space (:func:`limit_own_memory`, so an allocation past the budget fails as a
Python error the child records and survives), while the parent watches the child's resident memory and
kills it past the limit (a backstop for memory that the address-space cap does not see coming). Either way
the parent learns the child's peak resident memory and, for a killed child, the signal.

    outcome = run_guarded([sys.executable, "row.py", spec], limit_bytes=8 * 2**30)
    outcome.returncode, outcome.signal, outcome.peak_rss_bytes, outcome.killed_over_limit
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

POLL_S = 0.05
GUARD_SLACK = 1.10  # the parent kills at 10% over the limit: the child's own cap should fail first


@dataclass
class GuardedOutcome:
    returncode: int
    signal: str | None  # "SIGKILL" when a signal ended the child
    peak_rss_bytes: int  # the child's peak resident set (VmHWM, or the parent's sampled maximum)
    killed_over_limit: bool  # the parent killed it for resident memory over the limit
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_bytes(text: str) -> int:
    """``"16GB"``, ``"4GiB"``, ``"512MB"``, ``"1e9"`` → bytes (GB and GiB both mean 2**30 here)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(float(value))


def status_bytes(pid: int | str, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``, ``VmSize``) in bytes; 0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> None:
    """Start this process's peak resident set (VmHWM) afresh (Linux ≥ 4.0); a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def limit_own_memory(limit_bytes: int) -> None:
    """Cap this process's address space so that its resident memory cannot grow past ``limit_bytes``:
    the cap is today's address space plus the headroom between today's resident set and the limit, so an
    allocation past the budget raises (torch: ``RuntimeError: ... can't allocate memory``) instead of
    inviting the kernel's out-of-memory killer."""
    headroom = max(limit_bytes - status_bytes("self", "VmRSS"), 0)
    cap = status_bytes("self", "VmSize") + headroom
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))


def run_guarded(
    command: list[str], limit_bytes: int, env: dict[str, str] | None = None, timeout_s: float | None = None
) -> GuardedOutcome:
    """Run ``command``, killing it when its resident memory passes ``limit_bytes`` × 1.1 (or ``timeout_s``)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    peak, killed = 0, False
    while child.poll() is None:
        rss = status_bytes(child.pid, "VmRSS")
        peak = max(peak, status_bytes(child.pid, "VmHWM"), rss)
        over_time = timeout_s is not None and time.perf_counter() - start > timeout_s
        if rss > limit_bytes * GUARD_SLACK or over_time:
            killed = not over_time
            child.send_signal(signal.SIGKILL)
            child.wait()
            break
        time.sleep(POLL_S)
    returncode = child.wait()
    return GuardedOutcome(
        returncode=returncode,
        signal=signal.Signals(-returncode).name if returncode < 0 else None,
        peak_rss_bytes=peak,
        killed_over_limit=killed,
        wall_s=time.perf_counter() - start,
    )


def environment(extra_path: list[str] | None = None) -> dict[str, str]:
    """This process's environment, with ``extra_path`` in front of PYTHONPATH (a peer model's packages)."""
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([*extra_path, *filter(None, [env.get("PYTHONPATH")])])
    return env
