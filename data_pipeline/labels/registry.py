"""Labellers by name, as the CLI's ``--label`` and the ingest stage name them."""

from __future__ import annotations

from data_pipeline.labels.amber14 import Amber14Labeller
from data_pipeline.labels.auto import AutoLabeller
from data_pipeline.labels.base import Labeller
from data_pipeline.labels.chgnet import CHGNetLabeller
from data_pipeline.labels.emt import EMTLabeller
from data_pipeline.labels.xtb import GFN1xTBLabeller, GFN2xTBLabeller

LABELLERS: dict[str, type[Labeller]] = {
    "xtb": GFN2xTBLabeller,
    "xtb-gfn1": GFN1xTBLabeller,
    "emt": EMTLabeller,
    "amber14": Amber14Labeller,
    "chgnet": CHGNetLabeller,
    "auto": AutoLabeller,
}


def labeller_class(method: str) -> type[Labeller]:
    """The labeller registered as ``method``; an unknown name is a ValueError listing the known ones."""
    try:
        return LABELLERS[method]
    except KeyError:
        raise ValueError(f"unknown label method {method!r}; expected one of {', '.join(LABELLERS)}") from None
