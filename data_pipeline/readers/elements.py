"""Element symbols to atomic numbers, and the chemical formulas that serve as group ids."""

from __future__ import annotations

from collections import Counter
from math import gcd

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

# Case-insensitive ("FE", "Fe", "fe"), as PDB element columns write them; deuterium is hydrogen.
SYMBOL_TO_Z: dict[str, int] = {symbol.upper(): z for symbol, z in atomic_numbers.items() if z > 0} | {"D": 1}


def atomic_number(symbol: str) -> int | None:
    """Atomic number of an element symbol (any case), or None for an unknown symbol."""
    return SYMBOL_TO_Z.get(symbol.strip().upper())


def hill_formula(numbers: np.ndarray, *, reduce: bool) -> str:
    """Hill-order formula of atomic numbers [N] (C, H, then alphabetical; alphabetical without carbon).

    ``reduce=True`` divides the counts by their greatest common divisor: a crystal's composition formula.
    """
    counts = Counter(chemical_symbols[int(z)] for z in np.asarray(numbers).reshape(-1))
    divisor = gcd(*counts.values()) if reduce and counts else 1
    order = sorted(
        counts, key=lambda s: (0, s) if s == "C" else (1, s) if s == "H" and "C" in counts else (2, s)
    )
    return "".join(s + (str(counts[s] // divisor) if counts[s] // divisor > 1 else "") for s in order)
