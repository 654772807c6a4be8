"""Train / val / test assignment by hashing a group id, the same on every process and platform.

Every structure of one group (the conformers of a molecule, the frames of a protein chain, the cells of
one composition) hashes to the same split, so no group straddles train and test. The hash is SHA-256 of
``"{seed}:{group_id}"``, never Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from data_pipeline.schema import BadInputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.9, 0.05, 0.05)


def group_unit_interval(group_id: str, seed: int) -> float:
    """The group's uniform draw in [0, 1): the first 8 bytes of SHA-256(``seed:group_id``) over 2⁶⁴."""
    digest = hashlib.sha256(f"{seed}:{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative (train, val, test) fractions summing to 1; raises :class:`BadInputError` otherwise."""
    values = tuple(float(f) for f in fractions)
    if len(values) != len(SPLITS):
        raise BadInputError(
            f"expected {len(SPLITS)} fractions (train, val, test), got {len(values)}", field="split_fractions"
        )
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise BadInputError(f"fractions must be finite and >= 0, got {list(values)}", field="split_fractions")
    if abs(sum(values) - 1.0) > 1e-6:
        raise BadInputError(
            f"fractions must sum to 1, got {list(values)} (sum {sum(values):.6g})", field="split_fractions"
        )
    return values


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` → ``(0.9, 0.05, 0.05)``, checked by :func:`check_fractions`."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise BadInputError(
            f"not a comma-separated list of numbers: {text!r}", field="split_fractions"
        ) from None
    return check_fractions(values)


def assign_split(group_id: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a group; the same answer for the same (group, seed, fractions)."""
    train, val, _ = check_fractions(fractions)
    u = group_unit_interval(group_id, seed)
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"
