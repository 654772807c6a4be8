"""Physics of the full model: symmetry, chirality, long range, forces, stress, precision switches, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from equivariance import assert_equivariant
from model_fixtures import alanine, batch_of, peptide, rocksalt, silicon, small_model, water

from model.activation_memory import measure_saved_activations
from model.atomfm import AtomFM, model_config
from model.long_range import COULOMB_CONSTANT, Electrostatics
from model.sizes import SIZES

MOLECULE_OUTPUTS = ("energy", "forces", "forces_direct", "dipole", "charges", "noise", "embedding")
MOLECULE_KINDS = ("invariant", "vector", "vector", "vector", "invariant", "vector", "invariant")
CRYSTAL_OUTPUTS = ("energy", "forces", "forces_direct", "stress", "charges")
CRYSTAL_KINDS = ("invariant", "vector", "vector", "matrix", "invariant")


def evaluate(
    model: AtomFM,
    atoms: Atoms,
    outputs: tuple[str, ...],
    pos: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    moved = atoms.copy()
    if pos is not None:
        moved.positions = pos.numpy()
    if cell is not None:
        moved.cell = cell.numpy()
    out = model(batch_of(moved), outputs)
    return tuple(out[name].detach() for name in outputs)


@pytest.mark.parametrize("structure", [alanine, lambda: peptide(num_residues=4)], ids=["alanine", "peptide"])
def test_molecule_outputs_are_equivariant(structure):
    model, atoms = small_model(), structure()
    assert_equivariant(
        lambda pos: evaluate(model, atoms, MOLECULE_OUTPUTS, pos),
        [torch.tensor(atoms.positions)],
        ["position"],
        MOLECULE_KINDS,
    )


def test_crystal_outputs_are_equivariant():
    model, atoms = small_model(long_range_method="ewald"), rocksalt()
    args = [torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)]
    assert_equivariant(
        lambda pos, cell: evaluate(model, atoms, CRYSTAL_OUTPUTS, pos, cell),
        args,
        ["position", "vector"],
        CRYSTAL_KINDS,
    )


def test_pme_agrees_with_ewald():
    # PME interpolates charges on a mesh: close to Ewald, and only as translation-invariant as its B-splines
    ewald, pme = small_model(long_range_method="ewald"), small_model(long_range_method="pme")
    for atoms in (rocksalt(), silicon()):
        e_ewald, f_ewald = evaluate(ewald, atoms, ("energy", "forces"))
        e_pme, f_pme = evaluate(pme, atoms, ("energy", "forces"))
        torch.testing.assert_close(e_pme, e_ewald, rtol=1e-5, atol=0)
        torch.testing.assert_close(f_pme, f_ewald, rtol=0, atol=1e-3 * float(f_ewald.abs().max()))


@pytest.mark.parametrize("structure", [alanine, rocksalt], ids=["alanine", "rocksalt"])
def test_permuting_atoms_permutes_outputs(structure):
    model, atoms = small_model(), structure()
    names = ("energy", "forces", "charges", "embedding")
    perm = np.random.default_rng(0).permutation(len(atoms))
    ref, permuted = evaluate(model, atoms, names), evaluate(model, atoms[perm], names)
    torch.testing.assert_close(permuted[0], ref[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(permuted[1], ref[1][perm], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(permuted[2], ref[2][perm], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(permuted[3], ref[3], rtol=1e-8, atol=1e-12)


def test_crystal_is_the_same_from_another_origin_cell_basis_or_supercell():
    model, atoms = small_model(), silicon()
    names = ("energy", "forces", "stress")
    energy, forces, stress = evaluate(model, atoms, names)

    shifted = atoms.copy()
    shifted.positions += np.array([1.3, -0.7, 2.1])
    shifted.wrap()
    other_origin = evaluate(model, shifted, names)

    sheared = atoms.copy()
    sheared.set_cell(np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1]]) @ atoms.cell.array, scale_atoms=False)
    sheared.wrap()
    other_basis = evaluate(model, sheared, names)

    for e, f, s in (other_origin, other_basis):
        torch.testing.assert_close(e, energy, rtol=1e-9, atol=0)
        torch.testing.assert_close(f, forces, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(s, stress, rtol=1e-8, atol=1e-10)

    e2, f2, s2 = evaluate(model, atoms.repeat((2, 1, 1)), names)
    torch.testing.assert_close(e2, 2 * energy, rtol=1e-9, atol=0)
    torch.testing.assert_close(f2, forces.repeat(2, 1), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(s2, stress, rtol=1e-8, atol=1e-10)


def test_mirror_image_has_the_same_energy_and_mirrored_forces():
    # Physics: an isolated molecule and its mirror image have the same energy. The model's pseudo-scalars
    # differ in sign between them (its representation is chiral), but the energy reads polar channels only.
    model, left = small_model(num_layers=4), alanine()
    right = left.copy()
    right.positions[:, 0] *= -1
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    for m in (model, small_model(num_layers=4, seed=3, conservative_forces=True)):
        for outputs in (("forces",), ("forces_direct",)):
            e_left = evaluate(m, left, ("energy", *outputs))
            e_right = evaluate(m, right, ("energy", *outputs))
            torch.testing.assert_close(e_right[0], e_left[0], rtol=1e-10, atol=0)
            for f_left, f_right in zip(e_left[1:], e_right[1:], strict=True):
                torch.testing.assert_close(f_right, f_left * mirror, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        pseudo = [
            model.backbone(*_backbone_inputs(model, atoms))[:, 0, model.backbone.polar == 0]
            for atoms in (left, right)
        ]
    torch.testing.assert_close(pseudo[1], -pseudo[0], rtol=1e-9, atol=1e-14)
    assert pseudo[0].abs().max() > 1e-12


def _backbone_inputs(model: AtomFM, atoms: Atoms) -> tuple:
    b = batch_of(atoms)
    src, dst = b.edge_index
    vec = b.pos[src] - b.pos[dst]
    return (b.z, b.edge_index, vec, b.batch, b.charge, b.spin, b.level_of_theory, b.domain)


def ion_pair(distance: float) -> Atoms:
    return Atoms("NaCl", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])


def test_ions_beyond_the_cutoff_feel_each_other_only_through_long_range():
    distances = [7.0, 9.0, 12.0, 20.0]
    model = small_model(long_range=True)
    energies, charges = [], []
    for d in distances:
        energy, q = evaluate(model, ion_pair(d), ("energy", "charges"))
        energies.append(energy[0])
        charges.append(q)
    q_na, q_cl = charges[0]
    for q in charges[1:]:
        torch.testing.assert_close(q, charges[0], rtol=1e-12, atol=1e-14)
    smearing = model.config.long_range_smearing
    coulomb = [
        COULOMB_CONSTANT * q_na * q_cl * math.erf(d / (math.sqrt(2) * smearing)) / d for d in distances
    ]
    for e, c in zip(energies[1:], coulomb[1:], strict=True):
        torch.testing.assert_close(e - energies[0], c - coulomb[0], rtol=1e-9, atol=1e-12)
    assert abs(float(energies[-1] - energies[0])) > 1e-3 * abs(float(q_na * q_cl))

    local = small_model(long_range=False)
    flat = [evaluate(local, ion_pair(d), ("energy",))[0] for d in distances]
    for e in flat[1:]:
        torch.testing.assert_close(e, flat[0], rtol=0, atol=0)


def test_electrostatics_reproduces_the_madelung_energy_of_rocksalt():
    # Point-like charges (σ = 0.2 Å ≪ 2.82 Å nearest-neighbour distance): E per ion pair = −M k_e / r0.
    atoms = rocksalt(rattle=0.0)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)[None]
    no_edges = (torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    madelung = 1.747564594633
    for method in ("ewald", "pme"):
        energy = Electrostatics(method, smearing=0.2)(
            torch.tensor([1.0, -1.0], dtype=torch.float64),
            pos,
            torch.zeros(2, dtype=torch.long),
            cell,
            torch.ones(1, 3, dtype=torch.bool),
            *no_edges,
        )
        torch.testing.assert_close(
            energy,
            torch.tensor([-madelung * COULOMB_CONSTANT / 2.82], dtype=torch.float64),
            rtol=1e-6,
            atol=0,
        )


@pytest.mark.parametrize("net_charge", [0.0, 0.4], ids=["neutral", "charged"])
def test_ewald_half_grid_sum_equals_torch_pmes_full_sum_with_derivatives(net_charge):
    # model.long_range sums half of torch-pme's k-grid through the structure factor; a triclinic cell whose
    # grid has even and odd axes, so that unpaired edge vectors occur; energy, forces, cell derivative and
    # the double backward of conservative training, in float64
    generator = torch.Generator().manual_seed(0)
    cell = torch.tensor([[7.3, 0.0, 0.0], [1.1, 6.6, 0.0], [0.7, -0.9, 8.15]], dtype=torch.float64)
    n = 24
    pos = (torch.rand(n, 3, generator=generator, dtype=torch.float64) @ cell).requires_grad_(True)
    cell = cell.requires_grad_(True)
    q = torch.randn(n, generator=generator, dtype=torch.float64)
    q = q - q.mean() + net_charge / n
    electrostatics = Electrostatics("ewald", smearing=1.0)
    calculator = electrostatics._torchpme_calculator(torch.float64, torch.device("cpu"))
    no_pairs = torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    ns = torch.ceil(torch.linalg.norm(cell.detach(), dim=1) / calculator.lr_wavelength).long()
    assert {int(v) % 2 for v in ns} == {0, 1}

    def ours():
        return electrostatics(
            q,
            pos,
            torch.zeros(n, dtype=torch.long),
            cell[None],
            torch.ones(1, 3, dtype=torch.bool),
            torch.zeros(2, 0, dtype=torch.long),
            torch.zeros(0, 3, dtype=torch.float64),
        )[0]

    def torch_pmes():
        return (
            q[:, None]
            * calculator(
                charges=q[:, None],
                cell=cell,
                positions=pos,
                neighbor_indices=no_pairs[0],
                neighbor_distances=no_pairs[1],
            )
        ).sum()

    results = []
    for energy_fn in (ours, torch_pmes):
        energy = energy_fn()
        forces, virial = torch.autograd.grad(-energy, (pos, cell), create_graph=True)
        second = torch.autograd.grad((forces**2).sum() + (virial**2).sum(), (pos, cell))
        results.append((energy.detach(), forces.detach(), virial.detach(), *second))
    for mine, reference in zip(*results, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12 * float(reference.abs().max()))


@pytest.mark.parametrize("structure", [alanine, rocksalt], ids=["direct", "ewald"])
def test_damping_switches_off_exactly_the_pairs_inside_its_radius(structure):
    atoms, damping = structure(), 3.0
    batch = batch_of(atoms, cutoff=3.5)
    cell = batch.cell.reshape(1, 3, 3)
    src, dst = batch.edge_index
    edge_vec = batch.pos[src] - batch.pos[dst] + batch.cell_offsets.double() @ cell[0]
    charges = torch.linspace(-0.7, 0.7, len(atoms), dtype=torch.float64)
    charges = charges - charges.mean()
    args = (charges, batch.pos, batch.batch, cell, batch.pbc.reshape(1, 3), batch.edge_index, edge_vec)
    damped, bare = Electrostatics(smearing=1.0, damping=damping), Electrostatics(smearing=1.0)
    r = torch.linalg.vector_norm(edge_vec, dim=-1)
    inside = r < damping
    assert inside.sum() > 2
    # each pair appears twice in the edge list
    removed = (
        0.5
        * COULOMB_CONSTANT
        * (charges[src] * charges[dst] * bare.pair_kernel(r) * (1 - damped._damping_factor(r)))[inside].sum()
    )
    torch.testing.assert_close(damped(*args), bare(*args) - removed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("periodic", [False, True], ids=["direct", "ewald"])
def test_electrostatics_is_twice_differentiable(periodic):
    electrostatics = Electrostatics("ewald", smearing=1.0, damping=2.5)
    atoms = rocksalt() if periodic else alanine()[:4]
    n = len(atoms)
    cell = torch.tensor(atoms.cell.array if periodic else np.zeros((3, 3)))[None]
    pbc = torch.full((1, 3), periodic)
    batch = batch_of(atoms, cutoff=3.0)

    def energy(pos: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        src, dst = batch.edge_index
        edge_vec = pos[src] - pos[dst] + batch.cell_offsets.double() @ cell[0]
        return electrostatics(
            charges, pos, torch.zeros(n, dtype=torch.long), cell, pbc, batch.edge_index, edge_vec
        )

    pos = torch.tensor(atoms.positions, requires_grad=True)
    charges = torch.linspace(-0.6, 0.6, n, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradgradcheck(energy, (pos, charges))


@pytest.mark.parametrize("structure", [water, rocksalt], ids=["water", "rocksalt"])
def test_conservative_forces_match_finite_differences(structure):
    model, atoms = small_model(), structure()
    forces = evaluate(model, atoms, ("forces",))[0]
    step = 1e-4
    numeric = torch.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * step
                energies.append(evaluate(model, moved, ("energy",))[0][0])
            numeric[i, k] = -(energies[0] - energies[1]) / (2 * step)
    torch.testing.assert_close(forces, numeric, rtol=1e-6, atol=1e-8)


def test_stress_matches_finite_difference_strain_derivative():
    model, atoms = small_model(), rocksalt()
    stress = evaluate(model, atoms, ("stress",))[0][0]
    step, volume = 1e-5, atoms.get_volume()
    numeric = torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(a, 3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * step / 2
                strain[b, a] += sign * step / 2
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                energies.append(evaluate(model, strained, ("energy",))[0][0])
            numeric[a, b] = numeric[b, a] = (energies[0] - energies[1]) / (2 * step * volume)
    torch.testing.assert_close(stress, numeric, rtol=1e-6, atol=1e-9)


def test_energy_and_forces_are_continuous_as_a_molecule_crosses_the_cutoff():
    model = small_model(long_range=False)
    cutoff = model.config.backbone.cutoff

    def energy_and_force(gap: float) -> tuple[float, float]:
        # water lies in the yz plane: shifted along x, each atom's copy (its closest partner) is `gap` away
        second = water()
        second.positions += [gap, 0.0, 0.0]
        energy, forces = evaluate(model, water() + second, ("energy", "forces"))
        return float(energy[0]), float(forces[3:, 0].sum())

    e_in, f_in = energy_and_force(cutoff - 1e-7)
    e_out, f_out = energy_and_force(cutoff + 1e-7)
    e_far, _ = energy_and_force(cutoff + 0.5)
    e_near, f_near = energy_and_force(cutoff - 0.5)
    assert abs(e_near - e_far) > 1e-6 and abs(f_near) > 1e-6  # the molecules do interact inside the cutoff
    assert abs(e_in - e_out) < 1e-9 * abs(e_near - e_far) + 1e-12
    assert abs(f_in - f_out) < 1e-5 * abs(f_near)
    assert e_out == e_far and abs(f_out) < 1e-15


def test_bf16_autocast_matches_fp32_within_bf16_precision():
    # bf16 keeps 8 significant bits (relative rounding 2e-3 per operation); errors grow through the layers,
    # and most in conservative forces, which are differences of bf16 products taken in the backward pass.
    tolerance = {"energy": 1e-2, "forces_direct": 2e-2, "charges": 1e-1, "forces": 1e-1}
    model = small_model().float()
    batch = batch_of(peptide(num_residues=3))
    batch.pos, batch.cell = batch.pos.float(), batch.cell.float()
    reference = model(batch, tuple(tolerance))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(batch, tuple(tolerance))
    for name, rtol in tolerance.items():
        scale = float(reference[name].detach().abs().max())
        error = float((low[name].detach().float() - reference[name].detach()).abs().max())
        assert 0 < error < rtol * scale, (name, error, scale)


@pytest.mark.parametrize("conservative", [False, True], ids=["direct", "conservative"])
def test_activation_checkpointing_gives_the_same_gradients(conservative):
    atoms = peptide(num_residues=3)
    names = ("energy", "forces") if conservative else ("energy", "forces_direct")
    grads, saved = [], []
    for checkpointing in (False, True):
        model = small_model(activation_checkpointing=checkpointing).train()
        batch = batch_of(atoms)

        def run(model: AtomFM = model, batch=batch) -> dict[str, torch.Tensor]:
            return model(batch, names, conservative=conservative)

        saved.append(measure_saved_activations(model, run))
        out = run()
        (out["energy"].square().sum() + out[names[1]].square().sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-9, atol=1e-12, msg=name)
    # each layer keeps only its input, for a conservative force loss too: its first backward is checkpointed
    # as well (model/checkpointing.py), so the graph kept for the second backward holds no layer's tensors
    assert saved[1] < 0.3 * saved[0]


def test_named_sizes_span_a_million_to_a_billion_parameters():
    counts = {}
    for name in SIZES:
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in AtomFM(model_config(name)).parameters())
    ordered = [counts[name] for name in SIZES]
    assert ordered == sorted(ordered)
    assert min(ordered) < 2_000_000 and max(ordered) >= 1_000_000_000
