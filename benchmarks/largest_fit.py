"""The largest structure a model fits in a memory budget: bisection on the number of copies of a replicated
structure, each probe one step of one mode in its own process under that budget (``memory_guard``).

A probe fits when its step finishes with a peak resident set within the budget; it does not when the step
runs out of memory (the child's capped address space), finishes above the budget (the cap is on address
space, which memory reserved before the cap was set can outgrow), or the parent kills it for resident
memory past the budget. From the probes' peak resident
memory against their atom counts a straight line gives the atoms that another budget would hold
(``extrapolate``): that is how a budget larger than the machine in use (``--memory 16GB`` on a shared
24 GB machine) is answered, marked as extrapolated.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from memory_guard import environment, run_guarded

ROW_SCRIPT = Path(__file__).resolve().parent / "model_rows.py"


def probe(
    spec: dict[str, Any], copies: int, limit_bytes: int, extra_path: list[str], timeout_s: float
) -> dict[str, Any]:
    """One step of ``spec["modes"][0]`` on ``copies`` copies under ``limit_bytes``: atoms, fits, peak RSS."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "probe.json"
        outcome = run_guarded(
            [sys.executable, str(ROW_SCRIPT), json.dumps({**spec, "copies": copies, "repeat": 0}), str(out)],
            limit_bytes,
            env=environment(extra_path),
            timeout_s=timeout_s,
        )
        result = json.loads(out.read_text()) if out.is_file() else {}
    mode = result.get("modes", {}).get(spec["modes"][0], {})
    peak = max(mode.get("peak_rss_bytes", 0), outcome.peak_rss_bytes)
    finished = "seconds" in mode
    memory_verdict = (
        finished or mode.get("out_of_memory") or result.get("out_of_memory") or outcome.killed_over_limit
    )
    if finished and peak <= limit_bytes:
        ended = "finished"
    elif memory_verdict:
        ended = "out of memory" if not finished else f"finished over the budget (peak {peak / 2**30:.2f} GiB)"
    elif outcome.signal == "SIGKILL":
        ended = f"timed out after {timeout_s:.0f} s"
    else:
        ended = result.get("error") or mode.get("error") or f"exit {outcome.returncode}"
    return {
        "copies": copies,
        "atoms": result.get("atoms"),
        "fits": ended == "finished",
        "over_budget": bool(memory_verdict) and ended != "finished",
        "peak_rss_bytes": peak,
        "seconds": mode.get("seconds"),
        "ended": ended,
    }


def largest_fit(
    spec: dict[str, Any],
    limit_bytes: int,
    extra_path: list[str],
    *,
    start_copies: int = 1,
    tolerance: float = 0.1,
    max_probes: int = 7,
    timeout_s: float = 600,
    log: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    """Largest copy count that fits (bracketed within ``tolerance``), by bisection guided by a straight line
    of peak memory against copies once two probes fit."""
    probes: list[dict[str, Any]] = []
    fits, fails = 0, None  # largest copies known to fit; smallest known not to
    copies = start_copies
    while len(probes) < max_probes:
        result = probe(spec, copies, limit_bytes, extra_path, timeout_s)
        probes.append(result)
        log(result)
        if result["fits"]:
            fits = max(fits, copies)
        elif result["over_budget"]:
            fails = copies if fails is None else min(fails, copies)
        else:
            break  # not a memory verdict (too slow, an error): stop, report what is known
        if fails is not None and fails - fits <= max(1, tolerance * fits):
            break
        guess = predicted_copies(probes, limit_bytes)
        upper = fails if fails is not None else max(2 * fits, 2)
        if guess is None or not fits < guess < upper:
            guess = (fits + upper) // 2 if fails is not None else upper
        copies = max(guess, fits + 1)
        if fails is not None and copies >= fails:
            break
    best = next((p for p in probes if p["fits"] and p["copies"] == fits), None)
    return {
        "limit_bytes": limit_bytes,
        "largest_fitting_copies": fits,
        "largest_fitting_atoms": best["atoms"] if best else 0,
        "smallest_failing_copies": fails,
        "probes": probes,
    }


def line_of(probes: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """Intercept and slope of peak RSS against ``key`` over the probes that fit (None with fewer than two)."""
    fitted = [p for p in probes if p["fits"] and p[key]]
    if len({p[key] for p in fitted}) < 2:
        return None
    slope, intercept = np.polyfit([p[key] for p in fitted], [p["peak_rss_bytes"] for p in fitted], 1)
    return (intercept, slope) if slope > 0 else None


def predicted_copies(probes: list[dict[str, Any]], limit_bytes: int) -> int | None:
    """The copy count whose peak memory the probes' straight line puts at 95% of the limit."""
    line = line_of(probes, "copies")
    if line is None:
        fitted = [p for p in probes if p["fits"]]
        if not fitted:
            return None
        p = max(fitted, key=lambda q: q["copies"])  # one point: memory proportional to copies
        return int(0.95 * limit_bytes / p["peak_rss_bytes"] * p["copies"])
    intercept, slope = line
    return int((0.95 * limit_bytes - intercept) / slope)


def extrapolate(fit: dict[str, Any], budget_bytes: int) -> int | None:
    """Atoms that ``budget_bytes`` would hold on the probes' straight line of peak RSS against atoms."""
    line = line_of(fit["probes"], "atoms")
    if line is None:
        return None
    intercept, slope = line
    return int((budget_bytes - intercept) / slope)
