"""Output heads of the model, chosen by name from :data:`HEADS` (fine-tuning registers more)."""

from __future__ import annotations

from model.heads.atom_type import AtomTypeHead
from model.heads.base import Head, HeadInput
from model.heads.charges import ChargeHead
from model.heads.energy import EnergyHead
from model.heads.graph_readout import EmbeddingHead, PropertyHead
from model.heads.residue import ResidueHead
from model.heads.vector import DenoisingHead, DirectForceHead

HEADS: dict[str, type[Head]] = {
    "energy": EnergyHead,
    "forces_direct": DirectForceHead,
    "noise": DenoisingHead,
    "charges": ChargeHead,
    "atom_type": AtomTypeHead,
    "residue": ResidueHead,
    "properties": PropertyHead,
    "embedding": EmbeddingHead,
}

__all__ = ["HEADS", "Head", "HeadInput"]
