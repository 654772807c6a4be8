"""How readers treat the awkward parts of real files: NMR ensembles, altlocs, waters, ligands, disorder."""

from __future__ import annotations

from dataclasses import dataclass, fields

from data_pipeline.schema import BadInputError

CHOICES: dict[str, tuple[str, ...]] = {
    "protein_models": ("first", "all"),
    "altloc": ("occupancy", "first"),
    "occupancy": ("error", "majority"),
}


@dataclass(frozen=True)
class ReaderOptions:
    """Reading choices shared by every format (each reader uses the ones that concern it).

    protein_models: ``first`` model of a multi-model PDB/mmCIF (NMR ensemble), or ``all`` models as frames.
    altloc: alternate locations resolved per residue by highest ``occupancy``, or the ``first`` listed.
    keep_water, keep_ligands: keep water molecules / hetero groups (ligands, ions) of protein files.
    skip_bad: skip and count a bad record instead of raising :class:`BadInputError`.
    occupancy: a partially occupied crystal site is an ``error`` (naming the site), or resolved to its
        ``majority`` species (a vacancy in the majority removes the site).
    """

    protein_models: str = "first"
    altloc: str = "occupancy"
    keep_water: bool = False
    keep_ligands: bool = False
    skip_bad: bool = False
    occupancy: str = "error"

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            allowed = CHOICES.get(option.name, (False, True))
            if value not in allowed or type(value) is not type(allowed[0]):
                raise BadInputError(
                    f"{value!r} is not a valid choice; expected one of {', '.join(map(repr, allowed))}",
                    field=f"ReaderOptions.{option.name}",
                )
