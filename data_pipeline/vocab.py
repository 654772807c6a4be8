"""Vocabularies the model embeds: domains and levels of theory.

``LEVELS_OF_THEORY`` is the built-in vocabulary every new model starts from. A model's own vocabulary
(``ModelConfig.levels_of_theory``, recorded in its checkpoint) is this one plus any level its training or
fine-tuning data named (a user's own DFT, ωB97X-D/def2-TZVP, ...), appended: indices are part of every
checkpoint's meaning, so names are only ever appended, never reordered.
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


def level_key(name: str | None) -> str:
    """The vocabulary's spelling of a level name (lower case; empty is ``none``)."""
    return (name or "none").strip().lower()


def level_index(name: str, levels: tuple[str, ...] | list[str] = LEVELS_OF_THEORY) -> int:
    """Index of a level of theory in ``levels`` (case-insensitive); a name not in it maps to ``other``."""
    key = level_key(name)
    return levels.index(key) if key in levels else levels.index("other")


def extend_levels(levels: tuple[str, ...] | list[str], names: list[str] | set[str]) -> list[str]:
    """``levels`` with every name of ``names`` it lacks appended (sorted, so the result is reproducible)."""
    out = list(levels)
    out += sorted({level_key(n) for n in names} - set(out))
    return out
