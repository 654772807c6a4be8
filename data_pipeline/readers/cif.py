"""A ``.cif`` file is either an mmCIF macromolecule or a small-molecule / inorganic crystal CIF.

mmCIF names its atom-site items with a dot (``_atom_site.Cartn_x``), crystal CIF with an underscore
(``_atom_site_fract_x``); that tells the two apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_pipeline.readers.crystals import read_crystal_cif
from data_pipeline.readers.proteins import read_mmcif
from data_pipeline.readers.sources import InputFile
from data_pipeline.schema import BadInputError, Structure

MMCIF_ATOM_SITE = re.compile(r"^_atom_site\.", re.MULTILINE)
CRYSTAL_CELL = re.compile(r"^_cell_length_a\s", re.MULTILINE)


def is_mmcif(text: str) -> bool:
    return MMCIF_ATOM_SITE.search(text) is not None


def cif_domain(f: InputFile) -> str:
    """``protein`` for mmCIF, ``material`` for a crystal CIF (one with a cell)."""
    if is_mmcif(f.text):
        return "protein"
    if CRYSTAL_CELL.search(f.text):
        return "material"
    raise f.error("neither mmCIF atom sites nor a crystal cell", record=f.source, field="_cell_length_a")


def read_cif(f: InputFile) -> Iterator[Structure | BadInputError]:
    """Records of a ``.cif`` file, by the reader of its dialect."""
    yield from read_mmcif(f) if is_mmcif(f.text) else read_crystal_cif(f)
