"""Random fcc alloys of the EMT metals: substituted, strained and rattled supercells."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data_pipeline.schema import Structure
from data_pipeline.sources.perturb import perturbed_crystal

EMT_METALS: tuple[str, ...] = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
# (repeat, cubic cell?) → 27, 32 and 48 atoms
SUPERCELLS: tuple[tuple[tuple[int, int, int], bool], ...] = (
    ((3, 3, 3), False),
    ((2, 2, 2), True),
    ((2, 2, 3), True),
)


def reduced_formula(symbols: list[str]) -> str:
    """Reduced composition, e.g. ``Cu3Au``: the group id of a crystal."""
    from pymatgen.core import Composition

    return Composition(" ".join(symbols)).reduced_formula


def emt_alloys(
    count: int,
    *,
    seed: int = 0,
    max_substitution: float = 0.5,
    max_strain: float = 0.03,
    max_displacement: float = 0.1,
) -> Iterator[Structure]:
    """``count`` alloy cells: an fcc host with up to ``max_substitution`` of its sites taken by a second metal.

    The lattice constant follows Vegard's law over ASE's reference lattice constants; the cell is then
    strained (symmetric, components up to ``max_strain``) and atoms rattled by up to ``max_displacement`` Å.
    Keys ``emt_alloys/<index>``; group id = reduced composition.
    """
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    rng = np.random.default_rng(seed)
    lattice = {m: reference_states[atomic_numbers[m]]["a"] for m in EMT_METALS}
    for index in range(count):
        host, guest = rng.choice(EMT_METALS, size=2, replace=False)
        repeat, cubic = SUPERCELLS[rng.integers(len(SUPERCELLS))]
        atoms = bulk(host, "fcc", a=lattice[host], cubic=cubic).repeat(repeat)
        n = len(atoms)
        swapped = rng.choice(n, size=int(round(rng.uniform(0, max_substitution) * n)), replace=False)
        symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
        symbols[swapped] = guest
        share = len(swapped) / n
        atoms.set_chemical_symbols(symbols.tolist())
        atoms.set_cell(
            atoms.cell * ((1 - share) * lattice[host] + share * lattice[guest]) / lattice[host],
            scale_atoms=True,
        )
        yield perturbed_crystal(
            atoms,
            key=f"emt_alloys/{index:06d}",
            group_id=reduced_formula(symbols.tolist()),
            extra={"origin": "fcc alloy", "host": str(host), "guest": str(guest), "guest_fraction": share},
            max_strain=max_strain,
            max_displacement=max_displacement,
            rng=rng,
        )
