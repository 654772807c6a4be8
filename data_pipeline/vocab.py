"""Fixed vocabularies the model embeds: domains and levels of theory.

Indices are part of every checkpoint's meaning: append new names, never reorder.
"""

from __future__ import annotations

from data_pipeline.schema import DOMAINS

LEVELS_OF_THEORY: tuple[str, ...] = (
    "none",  # unlabelled: self-supervised tasks only
    "other",  # any name not listed below
    "gfn2-xtb",
    "emt",
    "amber14",
    "chgnet",
    "pbe",
    "pbe+u",
    "r2scan",
    "wb97m-v",
    "wb97x-d",
    "b3lyp",
    "hf",
)


def domain_index(name: str) -> int:
    """Index of a domain name; raises ValueError naming the domain."""
    try:
        return DOMAINS.index(name)
    except ValueError:
        raise ValueError(f"unknown domain {name!r}; expected one of {', '.join(DOMAINS)}") from None


def level_index(name: str) -> int:
    """Index of a level of theory (case-insensitive); unknown names map to ``other``."""
    key = (name or "none").lower()
    return LEVELS_OF_THEORY.index(key) if key in LEVELS_OF_THEORY else LEVELS_OF_THEORY.index("other")
