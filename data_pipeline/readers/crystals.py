"""Crystal CIF files (COD, ICSD, Materials Project style): one periodic record per data block, via pymatgen.

Blocks without atom sites (e.g. a ``data_global`` block of publication details) are not records. The
cell is checked before pymatgen expands the symmetry, so a degenerate cell, a non-finite coordinate or an
occupancy outside (0, 1] (pymatgen drops a site of occupancy 0 without a word, changing the composition) is
reported by CIF tag and site label. A partially occupied site is an error unless ``occupancy="majority"``,
which keeps the species of largest occupancy (ties: first listed) and removes the site when the vacancy
fraction is larger. The group id is the reduced Hill formula of the record.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
from pymatgen.core.periodic_table import DummySpecies
from pymatgen.io.cif import CifBlock, CifFile, CifParser, str2float

from data_pipeline.readers.elements import hill_formula
from data_pipeline.readers.sources import InputFile
from data_pipeline.schema import BadInputError, Structure

CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
COORDINATE_TAGS = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
OCCUPANCY_TAG = "_atom_site_occupancy"
OCCUPANCY_TOLERANCE = 1e-3  # rounding in the file (1.0004)


def read_crystal_cif(f: InputFile) -> Iterator[Structure | BadInputError]:
    """One record per data block with atom sites, keyed by the block's index in the file."""
    try:
        blocks = list(CifFile.from_str(f.text).data.values())
    except Exception as err:  # pymatgen's tokenizer raises bare ValueErrors on broken loops
        raise f.error(
            f"cannot parse as CIF ({type(err).__name__}: {err}); is the file truncated?",
            record=f.key(0),
            field="contents",
        ) from None
    for index, block in enumerate(blocks):
        if any(tag.startswith("_atom_site_") for tag in block.data):
            yield crystal_record(f, block, key=f.key(index))


def crystal_record(f: InputFile, block: CifBlock, *, key: str) -> Structure | BadInputError:
    """A record from one CIF data block, or the error naming the tag or site that disqualifies it."""
    problem = (
        cell_problem(f, block, key=key)
        or coordinate_problem(f, block, key=key)
        or occupancy_problem(f, block, key=key)
    )
    if problem is not None:
        return problem
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = CifParser.from_str(str(block)).parse_structures(primitive=False, on_error="raise")[0]
        except Exception as err:  # pymatgen wraps symmetry and parsing failures in ValueError and others
            return f.error(
                f"pymatgen cannot build a structure ({type(err).__name__}: {err})",
                record=key,
                field="contents",
            )
    numbers, positions = [], []
    for site in structure:
        species = list(site.species.items())
        unknown = [str(sp) for sp, _ in species if isinstance(sp, DummySpecies)]
        if unknown:
            return f.error(
                f"site {site.label!r} has unknown element {unknown[0]!r}",
                record=key,
                field="_atom_site_type_symbol",
            )
        if not site.is_ordered:
            if f.options.occupancy == "error":
                occupancies = ", ".join(f"{sp}: {amount:g}" for sp, amount in species)
                return f.error(
                    f"site {site.label!r} at fractional {np.round(site.frac_coords, 4).tolist()} is partially "
                    f"occupied ({occupancies}); pass occupancy='majority' to keep the "
                    "majority species",
                    record=key,
                    field="_atom_site_occupancy",
                )
            majority, amount = max(species, key=lambda item: item[1])
            if amount < 1.0 - sum(a for _, a in species):
                continue
            species = [(majority, amount)]
        numbers.append(species[0][0].Z)
        positions.append(site.coords)
    return Structure(
        key=key,
        domain="material",
        atomic_numbers=np.array(numbers, dtype=np.int64),
        positions=np.array(positions, dtype=np.float64).reshape(-1, 3),
        cell=structure.lattice.matrix,
        pbc=np.ones(3, dtype=bool),
        group_id=hill_formula(np.array(numbers), reduce=True),
        extra={"block": block.header, "parser_warnings": sorted({str(w.message) for w in caught})},
    )


def cell_problem(f: InputFile, block: CifBlock, *, key: str) -> BadInputError | None:
    """The error of a missing, non-numeric or degenerate cell, or None for a sound one."""
    values = []
    for tag in CELL_TAGS:
        text = block.data.get(tag)
        if text is None:
            return f.error("missing: not a crystal CIF (no cell)", record=key, field=tag)
        try:
            values.append(str2float(text))
        except ValueError:
            return f.error(f"not a number: {text!r}", record=key, field=tag)
    a, b, c, *angles = values
    cosines = [math.cos(math.radians(angle)) for angle in angles]
    shape = 1 - sum(x * x for x in cosines) + 2 * math.prod(cosines)
    if not all(math.isfinite(v) for v in values) or min(a, b, c) <= 0 or not shape > 1e-8:
        return f.error(
            f"degenerate cell a={a:g} b={b:g} c={c:g} alpha={angles[0]:g} beta={angles[1]:g} "
            f"gamma={angles[2]:g}: zero volume",
            record=key,
            field="cell",
        )
    return None


def coordinate_problem(f: InputFile, block: CifBlock, *, key: str) -> BadInputError | None:
    """The error of a missing or non-finite fractional coordinate, naming the site; None if all are sound."""
    labels = _column(block, "_atom_site_label") or _column(block, "_atom_site_type_symbol")
    for tag in COORDINATE_TAGS:
        if tag not in block.data:
            return f.error("missing: only fractional coordinates are supported", record=key, field=tag)
        for row, text in enumerate(_column(block, tag)):
            try:
                value = str2float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                label = labels[row] if row < len(labels) else f"#{row}"
                return f.error(f"site {label!r} has coordinate {text!r}", record=key, field=tag)
    return None


def occupancy_problem(f: InputFile, block: CifBlock, *, key: str) -> BadInputError | None:
    """The error of a site whose occupancy is not in (0, 1] (``?`` and ``.``, unknown and default, pass)."""
    labels = _column(block, "_atom_site_label") or _column(block, "_atom_site_type_symbol")
    for row, text in enumerate(_column(block, OCCUPANCY_TAG)):
        if text.strip() in ("?", "."):
            continue
        try:
            value = str2float(text)
        except ValueError:
            value = math.nan
        if not 0 < value <= 1 + OCCUPANCY_TOLERANCE:
            label = labels[row] if row < len(labels) else f"#{row}"
            return f.error(
                f"site {label!r} has occupancy {text!r}; an occupancy is a fraction in (0, 1] (delete an empty "
                "site rather than give it occupancy 0)",
                record=key,
                field=OCCUPANCY_TAG,
            )
    return None


def _column(block: CifBlock, tag: str) -> list[str]:
    """A loop column as a list (a tag outside a loop holds one value)."""
    value = block.data.get(tag, [])
    return value if isinstance(value, list) else [value]
