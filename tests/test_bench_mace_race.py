"""Smoke test of bench_accuracy's MACE glue (benchmarks/mace_race.py): a few steps, saved, served by MACE's
own calculator with the E0s fitted like atomfm's reference energies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from data_pipeline.schema import Structure

pytest.importorskip("mace")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from mace_race import MaceSettings, fit_e0s, train_mace  # noqa: E402


def emt_molecules() -> list[Structure]:
    out = []
    for k, name in enumerate(["H2O", "NH3", "CH4", "H2O2", "C2H6", "CH3OH"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        out.append(
            Structure(
                key=f"g2/{name}",
                domain="molecule",
                atomic_numbers=atoms.numbers,
                positions=atoms.positions,
                level_of_theory="emt",
                energy=float(atoms.get_potential_energy()),
                forces=atoms.get_forces(),
            )
        )
    return out


def test_mace_trains_saves_and_serves(tmp_path):
    from mace.calculators import MACECalculator

    structures = emt_molecules()
    settings = MaceSettings(channels=4, max_atoms=12, ema_decay=0.9)
    record = train_mace(structures, settings, budget_s=60, out_dir=tmp_path, max_steps=3)
    assert record["steps"] == 3 and record["stopped_by"] == "max_steps"
    assert record["hidden_irreps"] == "4x0e + 4x1o" and record["atomic_numbers"] == [1, 6, 7, 8]
    assert json.loads((tmp_path / "result.json").read_text())["curve"][-1]["step"] == 3
    calc = MACECalculator(model_paths=str(tmp_path / "model.pt"), device="cpu", default_dtype="float32")
    water = molecule("H2O")
    water.calc = calc
    assert water.get_forces().shape == (3, 3) and np.isfinite(water.get_potential_energy())
    e0 = dict(zip([1, 6, 7, 8], fit_e0s(structures, [1, 6, 7, 8]), strict=True))
    assert record["e0s"] == pytest.approx({str(z): round(v, 6) for z, v in e0.items()}, abs=1e-6)
