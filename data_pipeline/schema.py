"""One structure, one sample: the record every reader produces and every shard stores.

Units are ASE's: Å, eV, eV/Å, eV/Å³, elementary charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

DOMAINS: tuple[str, ...] = ("molecule", "protein", "material")
MAX_Z = 118
# Å: atoms or a lattice vector spread wider than this are a unit mistake or a corrupt file (the largest
# macromolecular assemblies span ~0.2 µm), and they break cell-list neighbour searches.
MAX_EXTENT = 1e4
# Units of the structure properties the labellers record (``Structure.properties``); other names are allowed.
PROPERTY_UNITS = {"homo_lumo_gap": "eV", "dipole_moment": "e·Å"}


class BadInputError(ValueError):
    """Bad input a user can meet: says which file, which record and which field, and what was wrong."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        record: str | int | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.record, self.field, self.reason = path, record, field, message
        where = []
        if path is not None:
            where.append(f"file {path}")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class Structure:
    """One structure.

    key: stable id ``source/record[/frame]``, unique in a corpus.
    atomic_numbers: uint8 [N], 1..118.   positions: float32 [N, 3] Å.
    cell: float32 [3, 3] Å (rows are lattice vectors) or None.   pbc: bool [3].
    energy: eV.   forces: float32 [N, 3] eV/Å.   stress: float32 [3, 3] eV/Å³ (ASE sign convention).
    group_id: what splits are hashed on (molecule identity, protein chain, crystal composition).
    per_atom: extra per-atom arrays (e.g. ``residue_index``, ``residue_name``, ``chain_id``, ``atom_name``,
    ``secondary_structure``).
    properties: scalar labels of the whole structure beyond the energy, by name (``homo_lumo_gap`` eV,
    ``dipole_moment`` e·Å: what the xTB labeller records); :data:`PROPERTY_UNITS` gives their units.
    extra: JSON-serialisable metadata (source file, conformer index, ...).
    """

    key: str
    domain: str
    atomic_numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    charge: int = 0
    spin: int = 1
    level_of_theory: str = "none"
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    group_id: str = ""
    split: str = ""
    per_atom: dict[str, np.ndarray] = field(default_factory=dict)
    properties: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        return int(len(self.atomic_numbers))

    @property
    def is_periodic(self) -> bool:
        return bool(np.any(self.pbc))

    def with_labels(
        self,
        *,
        energy: float | None,
        forces: np.ndarray | None,
        stress: np.ndarray | None,
        level_of_theory: str,
    ) -> Structure:
        """A copy carrying new labels from ``level_of_theory``."""
        return replace(
            self,
            energy=None if energy is None else float(energy),
            forces=None if forces is None else np.asarray(forces, dtype=np.float32).reshape(-1, 3),
            stress=None if stress is None else np.asarray(stress, dtype=np.float32).reshape(3, 3),
            level_of_theory=level_of_theory,
        )


def validate(s: Structure, *, path: str | None = None) -> Structure:
    """Check a record and normalise its dtypes; raise :class:`BadInputError` naming file, record and field.

    Every field is checked for its type as well as its value (a label read from a text header may be a word or
    a list), so a bad record is always a :class:`BadInputError`, never a ``TypeError`` from numpy.
    """

    def bad(name: str, msg: str) -> BadInputError:
        return BadInputError(msg, path=path, record=s.key, field=name)

    def numeric(name: str, value: Any, dtype: Any) -> np.ndarray:
        try:
            return np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            raise bad(name, f"expected numbers, got {_preview(value)}") from None

    if not isinstance(s.key, str) or not s.key:
        raise bad("key", "empty key" if not s.key else f"expected a string, got {_preview(s.key)}")
    if s.domain not in DOMAINS:
        raise bad("domain", f"unknown domain {s.domain!r}; expected one of {', '.join(DOMAINS)}")
    try:
        z = np.asarray(s.atomic_numbers)
    except ValueError:
        raise bad(
            "atomic_numbers", f"expected a list of integers, got {_preview(s.atomic_numbers)}"
        ) from None
    if z.ndim != 1 or z.size == 0:
        raise bad("atomic_numbers", "structure has no atoms")
    if not np.issubdtype(z.dtype, np.integer):
        raise bad("atomic_numbers", f"atomic numbers must be integers, got dtype {z.dtype}")
    if z.min() < 1 or z.max() > MAX_Z:
        i = int(np.argmax((z < 1) | (z > MAX_Z)))
        raise bad("atomic_numbers", f"atom {i} has Z={int(z[i])}; Z must be in 1..{MAX_Z} (unknown element?)")
    n = z.size
    pos = numeric("positions", s.positions, np.float64)
    if pos.shape != (n, 3):
        raise bad("positions", f"shape {pos.shape}, expected ({n}, 3)")
    if not np.isfinite(pos).all():
        i = int(np.argmax(~np.isfinite(pos).all(axis=1)))
        raise bad("positions", f"atom {i} has a non-finite coordinate {pos[i].tolist()}")
    _check_extent(pos, bad)
    pbc = numeric("pbc", s.pbc, bool).reshape(-1)
    if pbc.shape != (3,):
        raise bad("pbc", f"expected 3 flags, got {pbc.shape}")
    cell = None
    if s.cell is not None:
        cell = numeric("cell", s.cell, np.float64)
        if cell.shape != (3, 3):
            raise bad("cell", f"shape {cell.shape}, expected (3, 3)")
        if not np.isfinite(cell).all():
            raise bad("cell", "non-finite cell entry")
    if pbc.any():
        if cell is None:
            raise bad("cell", "periodic structure without a cell")
        vol = abs(float(np.linalg.det(cell)))
        lengths = np.linalg.norm(cell, axis=1)
        if vol < 1e-6 * max(float(np.prod(lengths)), 1e-12) or vol < 1e-3:
            raise bad(
                "cell",
                f"degenerate cell (volume {vol:.3g} Å³): lattice vectors are (nearly) linearly dependent",
            )
        if lengths.max() > MAX_EXTENT:
            k = int(np.argmax(lengths))
            raise bad(
                "cell",
                f"lattice vector {'abc'[k]} is {lengths[k]:.3g} Å long, more than {MAX_EXTENT:g} Å: a length in "
                "the wrong unit or a corrupt file?",
            )
    energy = None
    if s.energy is not None:
        energy = _one_number(s.energy)
        if energy is None:
            raise bad("energy", f"expected one number (eV), got {_preview(s.energy)}")
        if not np.isfinite(energy):
            raise bad("energy", f"non-finite energy {energy}")
    forces = None
    if s.forces is not None:
        forces = numeric("forces", s.forces, np.float32)
        if forces.shape != (n, 3):
            raise bad("forces", f"shape {forces.shape}, expected ({n}, 3)")
        if not np.isfinite(forces).all():
            raise bad("forces", "non-finite force")
    stress = None
    if s.stress is not None:
        stress = numeric("stress", s.stress, np.float32)
        if stress.shape == (6,):
            stress = voigt_to_matrix(stress)
        if stress.shape != (3, 3):
            raise bad("stress", f"shape {stress.shape}, expected (3, 3) or Voigt (6,)")
        if not np.isfinite(stress).all():
            raise bad("stress", "non-finite stress")
    for name, arr in s.per_atom.items():
        try:
            length = len(arr)
        except TypeError:
            length = None
        if length != n:
            raise bad(f"per_atom.{name}", f"length {length}, expected {n}")
    properties = {}
    if not isinstance(s.properties, dict):
        raise bad("properties", f"expected {{name: number}}, got {_preview(s.properties)}")
    for name, value in s.properties.items():
        number = _one_number(value)
        if not isinstance(name, str) or not name:
            raise bad("properties", f"property names must be non-empty strings, got {_preview(name)}")
        if number is None or not np.isfinite(number):
            raise bad(f"properties.{name}", f"expected one finite number, got {_preview(value)}")
        properties[name] = number
    charge, spin = _whole_number(s.charge), _whole_number(s.spin)
    if charge is None:
        raise bad("charge", f"expected a whole number (e), got {_preview(s.charge)}")
    if spin is None:
        raise bad("spin", f"expected a whole number (multiplicity), got {_preview(s.spin)}")
    if spin < 1:
        raise bad("spin", f"spin multiplicity must be >= 1, got {spin}")
    if not isinstance(s.level_of_theory, str):
        raise bad("level_of_theory", f"expected a name, got {_preview(s.level_of_theory)}")
    return replace(
        s,
        atomic_numbers=z.astype(np.uint8),
        positions=pos.astype(np.float32),
        cell=None if cell is None else cell.astype(np.float32),
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress,
        charge=charge,
        spin=spin,
        properties=properties,
    )


def _check_extent(pos: np.ndarray, bad: Any) -> None:
    """Refuse atoms spread over more than :data:`MAX_EXTENT` in any direction, naming the farthest atom."""
    span = pos.max(axis=0) - pos.min(axis=0)
    axis = int(np.argmax(span))
    if span[axis] <= MAX_EXTENT:
        return
    centre = np.median(pos, axis=0)
    far = int(np.argmax(np.abs(pos[:, axis] - centre[axis])))
    raise bad(
        "positions",
        f"the atoms span {span[axis]:.3g} Å along {'xyz'[axis]}, more than {MAX_EXTENT:g} Å; atom {far} at "
        f"{np.round(pos[far], 3).tolist()} lies far from the others: a coordinate in the wrong unit or a "
        "corrupt file?",
    )


def _one_number(value: Any) -> float | None:
    """``value`` as a float when it is one real number (a Python or NumPy scalar, or a one-element array)."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _whole_number(value: Any) -> int | None:
    number = _one_number(value)
    return int(number) if number is not None and np.isfinite(number) and number.is_integer() else None


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    """ASE Voigt order (xx, yy, zz, yz, xz, xy) → symmetric [3, 3]."""
    xx, yy, zz, yz, xz, xy = np.asarray(v).tolist()
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], dtype=np.float32)
