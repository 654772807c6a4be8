"""Hostile input to the ASE calculator: a structure it cannot answer for is refused naming the field, a damaged
checkpoint names its file, and what it answers outside its training is said once."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from model_fixtures import SMALL, water

from data_pipeline.schema import BadInputError
from model.calculator import AtomFMCalculator


@pytest.fixture(scope="module")
def calc() -> AtomFMCalculator:
    return AtomFMCalculator.from_config("tiny", **SMALL)


def stray_atom() -> Atoms:
    atoms = water()
    atoms.positions[2] = [1e6, 0.0, 0.0]
    return atoms


def nan_coordinate() -> Atoms:
    atoms = water()
    atoms.positions[1, 1] = np.nan
    return atoms


def huge_cell() -> Atoms:
    return Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=np.diag([1e6, 3.6, 3.6]), pbc=True)


def flat_cell() -> Atoms:
    return Atoms(
        "Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[[3, 0, 0], [3, 0, 0], [0, 0, 3]], pbc=True
    )


def dummy_element() -> Atoms:
    return Atoms("XH", positions=[[0, 0, 0], [0, 0, 1]])


BAD_STRUCTURES = {
    "stray_atom": (stray_atom, "positions"),
    "nan_coordinate": (nan_coordinate, "positions"),
    "huge_cell": (huge_cell, "cell"),
    "flat_cell": (flat_cell, "cell"),
    "dummy_element": (dummy_element, "atomic_numbers"),
    "no_atoms": (Atoms, "atomic_numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_STRUCTURES))
def test_a_structure_the_calculator_cannot_answer_for_is_refused_naming_the_field(case, calc):
    build, field = BAD_STRUCTURES[case]
    atoms = build()
    atoms.calc = calc
    with pytest.raises(BadInputError) as info:
        atoms.get_potential_energy()
    assert info.value.field == field and f"field '{field}'" in str(info.value)
