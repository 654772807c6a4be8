"""The ASE calculator (relaxation, MD, stress, charges, level of theory) and loading models from disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.units import fs
from model_fixtures import SMALL, alanine, batch_of, silicon, small_model, water

from data_pipeline.schema import BadInputError
from model.calculator import AtomFMCalculator
from model.checkpoint_io import load_model, save_export


def calculator(**options) -> AtomFMCalculator:
    return AtomFMCalculator.from_config("tiny", calculator_options=options, **SMALL)


def test_bfgs_relaxation_lowers_energy_and_forces():
    atoms = alanine()
    atoms.rattle(0.05, seed=4)
    atoms.calc = calculator()
    start_energy, start_fmax = atoms.get_potential_energy(), np.abs(atoms.get_forces()).max()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=8)
    assert atoms.get_potential_energy() < start_energy - 1e-4
    assert np.abs(atoms.get_forces()).max() < start_fmax


def test_velocity_verlet_conserves_total_energy():
    atoms = alanine()
    atoms.calc = calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    start = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * fs, logfile=None).run(20)
    assert np.linalg.norm(atoms.positions - alanine().positions, axis=1).max() > 0.01  # the atoms moved
    assert abs(atoms.get_total_energy() - start) < 1e-4


def test_stress_matches_ase_numerical_stress_and_is_absent_for_molecules():
    crystal = silicon()
    crystal.calc = calculator()
    np.testing.assert_allclose(
        crystal.get_stress(), crystal.calc.calculate_numerical_stress(crystal, d=1e-5), rtol=1e-5, atol=1e-9
    )
    molecule = water()
    molecule.calc = calculator()
    with pytest.raises(PropertyNotImplementedError):
        molecule.get_stress()


def test_total_charge_comes_from_atoms_info_and_the_charges_add_up():
    atoms = alanine()
    atoms.info["charge"] = 1
    atoms.calc = calculator()
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-12)
    assert atoms.get_dipole_moment().shape == (3,)
    atoms.calc = calculator(charge=-1)
    assert atoms.get_charges().sum() == pytest.approx(-1.0, abs=1e-12)


def test_level_of_theory_conditions_the_prediction():
    atoms = alanine()
    energies = {}
    for level in ("gfn2-xtb", "pbe"):
        atoms.calc = calculator(level_of_theory=level)
        energies[level] = atoms.get_potential_energy()
    assert abs(energies["gfn2-xtb"] - energies["pbe"]) > 1e-4
    with pytest.raises(ValueError, match="gfn2xtb"):
        calculator(level_of_theory="gfn2xtb")


def test_bad_atoms_are_reported_with_the_field():
    atoms = water()
    atoms.positions[1, 2] = np.nan
    atoms.calc = calculator()
    with pytest.raises(BadInputError, match="positions"):
        atoms.get_potential_energy()


def predictions(model, atoms) -> dict[str, torch.Tensor]:
    out = model(batch_of(atoms), ("energy", "forces"))
    return {k: v.detach() for k, v in out.items()}


def test_export_and_ddp_checkpoint_reload_the_same_model(tmp_path):
    model = small_model(seed=5)
    atoms = alanine()
    expected = predictions(model, atoms)

    save_export(model, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "checksums.json",
        "model.safetensors",
        "model_config.json",
    ]
    calc = AtomFMCalculator.from_checkpoint(tmp_path / "export", level_of_theory="gfn2-xtb")
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"].numpy(), rtol=1e-5, atol=1e-6)

    ddp = tmp_path / "ddp_checkpoint"
    ddp.mkdir()
    (ddp / "model_config.json").write_text(json.dumps(model.config.to_dict()))
    wrapped = {
        f"module.{k}": v for k, v in model.state_dict().items()
    }  # as DistributedDataParallel names them
    torch.save({"model": wrapped, "step": 7}, ddp / "ddp.pt")
    reloaded = predictions(load_model(ddp, dtype=torch.float64), atoms)
    torch.testing.assert_close(reloaded["energy"], expected["energy"], rtol=1e-6, atol=1e-6)


def test_missing_or_foreign_folders_give_clear_errors(tmp_path):
    with pytest.raises(BadInputError, match="no such checkpoint"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="missing model_config.json"):
        load_model(tmp_path)
    (tmp_path / "model_config.json").write_text(json.dumps({"bakcbone": {}}))
    with pytest.raises(BadInputError, match="model_config.json.*'bakcbone'"):
        load_model(tmp_path)
    (tmp_path / "model_config.json").write_text(json.dumps(small_model().config.to_dict()))
    with pytest.raises(BadInputError, match="no weights"):
        load_model(tmp_path)
    other = small_model(num_layers=1)
    torch.save({"model": other.state_dict()}, tmp_path / "ddp.pt")
    with pytest.raises(BadInputError, match="do not fit the model"):
        load_model(tmp_path)


DEEPSPEED_RUNS = ((0, True), (2, False), (3, False))  # (ZeRO stage, bf16)


def write_deepspeed_checkpoints(out: str, port: int) -> None:
    """Train one step under DeepSpeed at each ZeRO stage and save a training checkpoint folder per stage,
    with the engine's own view of the weights beside it (run in a fresh process: it starts torch.distributed)."""
    import deepspeed

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    for stage, bf16 in DEEPSPEED_RUNS:
        model = small_model(seed=stage).float().train()
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": stage},
            "optimizer": {"type": "Adam", "params": {"lr": 1e-2, "torch_adam": True}},
            "bf16": {"enabled": bf16},
        }
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        batch = batch_of(alanine())
        batch.pos, batch.cell = batch.pos.float(), batch.cell.float()
        out_ = engine(batch, ("energy", "forces_direct"))
        engine.backward(out_["energy"].float().square().sum() + out_["forces_direct"].float().square().sum())
        engine.step()
        folder = Path(out) / f"zero{stage}"
        engine.save_checkpoint(str(folder / "ds"))
        (folder / "model_config.json").write_text(json.dumps(model.config.to_dict()))
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            weights = {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}
        torch.save(weights, folder / "engine_weights.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deepspeed_checkpoints_of_every_zero_stage_load(tmp_path):
    script = f"from test_calculator import write_deepspeed_checkpoints; write_deepspeed_checkpoints({str(tmp_path)!r}, {free_port()})"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for stage, bf16 in DEEPSPEED_RUNS:
        folder = tmp_path / f"zero{stage}"
        loaded = load_model(folder).state_dict()
        engine = torch.load(folder / "engine_weights.pt")
        fresh = small_model(seed=stage).float().state_dict()
        trained = [k for k in loaded if not torch.equal(engine[k], fresh[k])]
        assert len(trained) > 10, f"ZeRO-{stage}: the step changed no weights?"
        for name in loaded:
            if bf16:  # the engine runs bf16 copies; the checkpoint's fp32 master weights are what loads
                torch.testing.assert_close(loaded[name], engine[name], rtol=1e-2, atol=1e-2, msg=name)
            else:
                torch.testing.assert_close(loaded[name], engine[name], rtol=0, atol=0, msg=name)
        if bf16:
            assert any(not torch.equal(loaded[k], loaded[k].bfloat16().float()) for k in trained)


def test_a_direct_force_checkpoint_makes_the_calculator_warn_and_a_conservative_one_does_not(tmp_path):
    import warnings

    from model.calculator import UntrainedForcesWarning

    save_export(small_model(seed=1, conservative_forces=False), tmp_path / "direct")
    save_export(small_model(seed=1, conservative_forces=True), tmp_path / "conservative")
    with pytest.warns(UntrainedForcesWarning, match="direct forces only"):
        served = AtomFMCalculator.from_checkpoint(tmp_path / "direct")
    assert served.conserves_energy  # it still serves −∂E/∂x, having said so
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedForcesWarning)
        assert AtomFMCalculator.from_checkpoint(tmp_path / "conservative").conserves_energy


def test_the_direct_head_is_served_only_when_asked_and_is_flagged(tmp_path):
    model = small_model(seed=2, conservative_forces=False)
    save_export(model, tmp_path / "direct")
    atoms = water()
    atoms.calc = AtomFMCalculator.from_checkpoint(
        tmp_path / "direct", forces="direct", level_of_theory="gfn2-xtb"
    )
    assert not atoms.calc.conserves_energy
    expected = model(batch_of(atoms), ("forces",), conservative=False)["forces"].detach().numpy()
    np.testing.assert_allclose(atoms.get_forces(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="forces must be one of"):
        AtomFMCalculator.from_checkpoint(tmp_path / "direct", forces="both")
