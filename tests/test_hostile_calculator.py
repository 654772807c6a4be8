"""Hostile input to the ASE calculator: a structure it cannot answer for is refused naming the field, a damaged
checkpoint names its file, and what it answers outside its training is said once."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from model_fixtures import SMALL, small_model, water

from data_pipeline.schema import BadInputError
from model.atomfm import model_config
from model.calculator import AtomFMCalculator, CloseContactWarning, UnseenElementWarning
from model.checkpoint_io import save_export
from model.coverage import TrainingCoverage


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


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return save_export(small_model(), tmp_path_factory.mktemp("export"))


def damaged_copy(export: Path, tmp_path: Path, name: str, damage) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    damage(copy / name)
    return copy / name


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "weights_truncated": ("model.safetensors", truncate),
    "weights_empty": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "weights_header_flipped": (
        "model.safetensors",
        lambda p: p.write_bytes(b"\xff" * 16 + p.read_bytes()[16:]),
    ),
    "weights_missing": ("model.safetensors", Path.unlink),
    "config_truncated": ("model_config.json", truncate),
    "config_a_list": ("model_config.json", lambda p: p.write_text("[1, 2]")),
    "config_binary": ("model_config.json", lambda p: p.write_bytes(bytes(range(256)))),
    "config_wrong_type": (
        "model_config.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "long_range": "yes"})),
    ),
    "config_missing": ("model_config.json", Path.unlink),
    "config_of_another_size": (
        "model_config.json",
        lambda p: p.write_text(json.dumps(model_config("tiny").to_dict())),
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_from_checkpoint_on_a_damaged_export_names_the_file(case, export, tmp_path):
    name, damage = DAMAGE[case]
    damaged = damaged_copy(export, tmp_path, name, damage)
    with pytest.raises(BadInputError) as info:
        AtomFMCalculator.from_checkpoint(damaged.parent)
    assert str(damaged.parent) in str(info.value) and name in str(info.value), str(info.value)


def covered_calculator(**coverage) -> AtomFMCalculator:
    """A calculator whose checkpoint says it was trained on ``coverage`` (elements, shortest distance)."""
    model = small_model()
    model.config.coverage = TrainingCoverage(**coverage)
    return AtomFMCalculator(model)


def energy_warnings(calc: AtomFMCalculator, atoms: Atoms) -> list[warnings.WarningMessage]:
    atoms.calc = calc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atoms.get_potential_energy()
    return [w for w in caught if issubclass(w.category, UnseenElementWarning | CloseContactWarning)]


def test_an_element_never_seen_in_training_is_named_once_per_calculator():
    calc = covered_calculator(elements=[1, 8], shortest_distance=0.9)
    assert energy_warnings(calc, water()) == []
    methane = molecule("CH4")
    (first,) = energy_warnings(calc, methane)
    assert first.category is UnseenElementWarning and "C (Z=6)" in str(first.message)
    assert energy_warnings(calc, molecule("CH4")) == [], "said once"
    (nitrogen,) = energy_warnings(calc, molecule("NH3"))
    assert "N (Z=7)" in str(nitrogen.message) and "C (Z=6)" not in str(nitrogen.message)


def test_two_atoms_far_closer_than_any_training_pair_are_named_once_per_calculator():
    calc = covered_calculator(elements=[1, 8], shortest_distance=0.9)
    squeezed = water()
    squeezed.positions[1] = squeezed.positions[0] + [0.0, 0.0, 0.3]
    (first,) = energy_warnings(calc, squeezed)
    assert first.category is CloseContactWarning
    assert "0.300 Å apart" in str(first.message) and "shortest 0.900 Å" in str(first.message)
    assert energy_warnings(calc, squeezed) == [], "said once"


def test_a_checkpoint_without_a_coverage_record_warns_of_nothing():
    squeezed = molecule("CH4")
    squeezed.positions[1] = squeezed.positions[0] + [0.0, 0.0, 0.2]
    assert energy_warnings(AtomFMCalculator(small_model()), squeezed) == []
