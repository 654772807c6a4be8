"""Pick the labeller by domain: molecules → GFN2-xTB, proteins → amber14, crystals → EMT or CHGNet."""

from __future__ import annotations

from data_pipeline.labels.amber14 import Amber14Labeller
from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.labels.chgnet import CHGNetLabeller
from data_pipeline.labels.emt import EMT_ELEMENTS, EMTLabeller
from data_pipeline.labels.xtb import GFN2xTBLabeller
from data_pipeline.schema import Structure


def labeller_for(s: Structure) -> type[Labeller]:
    """The labeller ``auto`` uses for ``s``: materials made only of EMT metals get EMT, others CHGNet."""
    if s.domain == "molecule":
        return GFN2xTBLabeller
    if s.domain == "protein":
        return Amber14Labeller
    if s.domain == "material":
        return EMTLabeller if {int(z) for z in s.atomic_numbers} <= EMT_ELEMENTS else CHGNetLabeller
    raise LabellingError(f"no automatic labeller for domain {s.domain!r}")


class AutoLabeller(Labeller):
    """Delegates each structure to :func:`labeller_for`; each delegate is built on first use, once."""

    name = "auto"
    level_of_theory = "by domain"

    def __init__(self) -> None:
        self._delegates: dict[type[Labeller], Labeller] = {}

    def compute(self, s: Structure) -> Structure:
        kind = labeller_for(s)
        if kind not in self._delegates:
            self._delegates[kind] = kind()
        return self._delegates[kind](s)
