"""Per-structure failures of a calculator: a physics task records why and goes on without the structure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ase.calculators.calculator import Calculator

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_REASON = 300  # characters of an error message kept in the result file


class Failures:
    """Structures that a calculator ("model" or "reference") could not handle, by key, with the error.

    Any exception counts: foreign calculators raise what they like (ASE's EMT a NotImplementedError for an
    element it has no parameters for, CHGNet and torch their own errors), and one structure must not end
    an evaluation. Failed structures are left out of the metrics, whose ``n`` shows how many were scored.
    A calculator that raised may keep half-updated state (ASE's EMT keeps the elements it failed on and
    answers NaN for them next time), so the calculators among the arguments are reset after a failure.
    """

    def __init__(self) -> None:
        self.reasons: dict[str, dict[str, str]] = {}

    def attempt(self, role: str, key: str, compute: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``compute(*args, **kwargs)``, or None after recording why it failed."""
        try:
            return compute(*args, **kwargs)
        except Exception as err:  # see the class docstring
            reason = f"{type(err).__name__}: {err}"[:MAX_REASON]
            self.reasons.setdefault(role, {})[key] = reason
            log.info("%s failed on %s: %s", role, key, reason)
            for value in (*args, *kwargs.values()):
                if isinstance(value, Calculator):
                    value.reset()
            return None

    def details(self) -> dict[str, Any]:
        return {
            "failed": {role: len(keys) for role, keys in sorted(self.reasons.items())},
            "failures": dict(sorted(self.reasons.items())),
        }
