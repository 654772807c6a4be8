"""Extended XYZ, ASE trajectories and ASE databases (SQLite ``.db``, ``.json``, fairchem's ``.aselmdb``).

Every image or database row is one record. Labels come from the calculator results the file stores
(``energy``, ``forces``, ``stress``), falling back to ``atoms.info`` / ``atoms.arrays`` entries of those
names; ``charge``, ``spin`` (multiplicity) and ``level_of_theory`` come from ``atoms.info`` or, for
databases, the row's key-value pairs and data. A periodic record is a ``material``, any other a ``molecule``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from data_pipeline.readers.elements import hill_formula
from data_pipeline.readers.sources import InputFile
from data_pipeline.readers.xyz_frames import xyz_frames
from data_pipeline.schema import BadInputError, Structure

IMAGE_FORMATS: dict[str, str] = {".xyz": "extxyz", ".extxyz": "extxyz", ".traj": "traj"}
DATABASE_TYPES: dict[str, str] = {".db": "db", ".json": "json", ".aselmdb": "aselmdb"}
# Opening an LMDB read-only takes no lock and cannot grow the file.
DATABASE_OPTIONS: dict[str, dict[str, Any]] = {"aselmdb": {"readonly": True}}


def read_ase_images(f: InputFile) -> Iterator[Structure | BadInputError]:
    """Records of an (extended) XYZ file or an ASE ``.traj``: one per image, keyed by image index.

    XYZ frames are cut by their headers first (:func:`xyz_frames`), so a frame ASE cannot parse is a bad record
    of its own and the frames after it are still read; a bad header ends the file.
    """
    if IMAGE_FORMATS[f.suffix] != "extxyz":
        yield from _read_trajectory(f)
        return
    for frame in xyz_frames(f):
        key = f.key(frame.index)
        try:
            atoms = ase.io.read(io.StringIO(frame.text), format="extxyz")
        except Exception as err:  # ASE's parser raises many types on damaged text
            yield _parse_error(f, err, key=key, where=f"frame at line {frame.line}: ")
            continue
        yield _record(f, atoms, key=key, info=atoms.info)


def _read_trajectory(f: InputFile) -> Iterator[Structure | BadInputError]:
    images = ase.io.iread(str(f.path), index=":", format=IMAGE_FORMATS[f.suffix])
    for index in itertools.count():
        key = f.key(index)
        try:
            atoms = next(images)
        except StopIteration:
            return
        except Exception as err:  # ASE's reader raises many types on a damaged file
            raise _parse_error(f, err, key=key, where="") from None
        yield _record(f, atoms, key=key, info=atoms.info)


def _parse_error(f: InputFile, err: Exception, *, key: str, where: str) -> BadInputError:
    """ASE's error on one image as a :class:`BadInputError` (an unknown element symbol named as such)."""
    symbol = err.args[0] if isinstance(err, KeyError) and err.args else None
    if isinstance(symbol, str) and symbol not in chemical_symbols:
        return f.error(f"{where}unknown element symbol {symbol!r}", record=key, field="atomic_numbers")
    return f.error(
        f"{where}cannot parse image ({type(err).__name__}: {err}); is the file truncated or corrupt?",
        record=key,
        field="contents",
    )


def read_ase_database(f: InputFile) -> Iterator[Structure | BadInputError]:
    """Records of an ASE database: one per row, keyed by row id."""
    db_type = DATABASE_TYPES[f.suffix]
    try:
        if db_type == "db":
            _require_ase_tables(f)
        db = ase.db.connect(
            str(f.path), type=db_type, use_lock_file=False, **DATABASE_OPTIONS.get(db_type, {})
        )
        rows = db.select()
        for row in rows:
            key = f.key(row.id)
            try:
                atoms = row.toatoms()
            except Exception as err:  # a damaged row: the others may still be good
                yield f.error(
                    f"cannot rebuild atoms from row ({type(err).__name__}: {err})",
                    record=key,
                    field="contents",
                )
                continue
            info = {
                **atoms.info,
                **row.key_value_pairs,
                **(row.data if isinstance(row.data, Mapping) else {}),
            }
            yield _record(f, atoms, key=key, info=info)
    except BadInputError:
        raise
    except Exception as err:  # sqlite3, lmdb and json raise their own types on a damaged or foreign file
        raise f.error(
            f"cannot read as an ASE {db_type} database ({type(err).__name__}: {err})",
            record=f.source,
            field="contents",
        ) from None


def _require_ase_tables(f: InputFile) -> None:
    """Refuse an SQLite file without ASE's tables: ASE would create them, writing into the input."""
    with contextlib.closing(sqlite3.connect(f"{f.path.resolve().as_uri()}?mode=ro", uri=True)) as con:
        found = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='systems'").fetchone()[0]
    if not found:
        raise f.error(
            "SQLite file without ASE's 'systems' table: not an ASE database",
            record=f.source,
            field="contents",
        )


def _record(f: InputFile, atoms: Atoms, *, key: str, info: Mapping[str, Any]) -> Structure | BadInputError:
    try:
        return atoms_to_structure(f, atoms, key=key, info=info)
    except BadInputError as err:
        return err


def atoms_to_structure(f: InputFile, atoms: Atoms, *, key: str, info: Mapping[str, Any]) -> Structure:
    """A record from ASE atoms, its stored calculator results and its metadata ``info``."""
    periodic = bool(atoms.pbc.any())
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy", info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    stress = results.get("stress", info.get("stress"))
    labelled = energy is not None or forces is not None or stress is not None
    return Structure(
        key=key,
        domain="material" if periodic else "molecule",
        atomic_numbers=atoms.numbers,
        positions=atoms.positions,
        cell=atoms.cell.array if periodic or atoms.cell.rank == 3 else None,
        pbc=atoms.pbc,
        charge=_integer(f, info, "charge", 0, key),
        spin=_integer(f, info, "spin", 1, key),
        level_of_theory=str(info.get("level_of_theory", "other")) if labelled else "none",
        energy=energy,  # validate() checks that it is one number
        forces=forces,
        stress=stress,
        group_id=hill_formula(atoms.numbers, reduce=periodic),
        extra={"info": _json_scalars(info)},
    )


def _integer(f: InputFile, info: Mapping[str, Any], name: str, default: int, key: str) -> int:
    value = info.get(name, default)
    try:
        whole = not isinstance(value, (bool, np.bool_)) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise f.error(f"{name} must be a whole number, got {value!r}", record=key, field=name)
    return int(value)


def _json_scalars(info: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """The plain scalars of ``info`` (names, ids, reference values), kept as record metadata."""
    scalars = {}
    for name, value in info.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (str, int, float, bool)):
            scalars[str(name)] = value
    return scalars
