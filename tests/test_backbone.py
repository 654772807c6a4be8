"""The equivariant backbone (model/backbone.py and its blocks) on real small structures."""

from __future__ import annotations

import itertools
import resource

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from equivariance import assert_equivariant, random_rotation
from rdkit import Chem
from rdkit.Chem import AllChem

from data_pipeline.schema import BadInputError
from data_pipeline.vocab import level_index
from model.activation import SeparableS2Activation, default_s2_resolution
from model.backbone import BackboneConfig, EquivariantTransformer
from model.sizes import SIZES, backbone_config, count_backbone_parameters
from model.so3 import CoefficientLayout, rotate, wigner_d

SMALL = dict(
    channels=8, num_layers=2, num_heads=2, attn_channels=8, ffn_channels=8, radial_channels=8, num_rbf=8
)


def _model(**overrides) -> EquivariantTransformer:
    torch.manual_seed(0)
    return EquivariantTransformer(BackboneConfig(**{**SMALL, **overrides})).double()


def _all_pairs(num_atoms: int) -> torch.Tensor:
    """Every ordered pair (j -> i), j != i: [2, N(N-1)], row 0 = source j, row 1 = target i."""
    target, source = torch.meshgrid(torch.arange(num_atoms), torch.arange(num_atoms), indexing="ij")
    keep = source != target
    return torch.stack([source[keep], target[keep]])


def _conditioning(num_atoms: int, level: str = "gfn2-xtb", charge: int = 0) -> dict[str, torch.Tensor]:
    return dict(
        batch=torch.zeros(num_atoms, dtype=torch.long),
        charge=torch.tensor([charge]),
        spin=torch.tensor([1]),
        level_of_theory=torch.tensor([level_index(level)]),
        domain=torch.tensor([0]),
    )


def _molecule_fn(model: EquivariantTransformer, z: torch.Tensor, **conditioning):
    """pos [N, 3] (and optional vector input [N, 3]) -> backbone features, with explicit all-pairs differences."""
    edge_index = _all_pairs(len(z))
    cond = {**_conditioning(len(z)), **conditioning}

    def fn(pos: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
        return model(z, edge_index, edge_vec, vector_input=vectors, **cond)

    return fn


def _ethanol() -> tuple[torch.Tensor, torch.Tensor]:
    atoms = molecule("CH3CH2OH")
    return torch.tensor(atoms.numbers), torch.tensor(atoms.positions)


def _alanine() -> tuple[torch.Tensor, torch.Tensor]:
    """L-alanine with hydrogens, one ETKDG conformer."""
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@@H](C(=O)O)N"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
    return z, torch.tensor(mol.GetConformer().GetPositions())


@pytest.mark.parametrize(
    "lmax,mmax,activation",
    [
        (1, 1, "gate"),
        (2, 1, "s2"),
        (3, 3, "gate"),
        (4, 2, "s2"),
        (5, 0, "gate"),
        (6, 6, "s2"),
        (6, 2, "gate"),
    ],
)
@torch.no_grad()
def test_backbone_is_rotation_and_translation_equivariant(lmax, mmax, activation):
    z, pos = _ethanol()
    fn = _molecule_fn(_model(lmax=lmax, mmax=mmax, activation=activation), z)
    vectors = torch.randn(len(z), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = fn(pos, vectors)
    assert x.shape == (len(z), (lmax + 1) ** 2, SMALL["channels"])
    assert x[:, 1:].abs().max() > 0.1
    assert_equivariant(fn, [pos, vectors], ["position", "vector"], ["spherical"], rtol=1e-8)


@torch.no_grad()
def test_s2_activation_error_is_grid_aliasing_and_falls_with_resolution():
    lmax, channels = 4, 8
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(30, (lmax + 1) ** 2, channels, dtype=torch.float64, generator=generator)
    scalars = torch.randn(30, channels, dtype=torch.float64, generator=generator)
    wigner = wigner_d(random_rotation(generator), lmax)
    errors = []
    for resolution in (None, 2 * default_s2_resolution(lmax), 3 * default_s2_resolution(lmax)):
        activation = SeparableS2Activation(CoefficientLayout(lmax, lmax), channels, resolution).double()
        expected = rotate(activation(x, scalars), wigner)
        errors.append(float((activation(rotate(x, wigner), scalars) - expected).norm() / expected.norm()))
    assert errors[0] < 1e-3
    assert errors[1] < errors[0] / 100 and errors[2] < 1e-9


@torch.no_grad()
def test_backbone_is_permutation_equivariant():
    z, pos = _ethanol()
    model = _model(lmax=3, mmax=2)
    permutation = torch.randperm(len(z), generator=torch.Generator().manual_seed(3))
    x = _molecule_fn(model, z)(pos)
    x_permuted = _molecule_fn(model, z[permutation])(pos[permutation])
    torch.testing.assert_close(x_permuted, x[permutation])


@torch.no_grad()
def test_mirror_image_keeps_the_polar_invariants_and_flips_the_pseudo_scalars():
    z, pos = _alanine()
    # Handedness needs three layers to reach l = 0: polar vectors from edges (1), turned about edges into
    # axial vectors by the SO(2) convolution's m/-m weights (2), contracted into pseudo-scalars (3).
    model = _model(lmax=2, num_layers=3, activation="gate")
    fn = _molecule_fn(model, z)
    pseudo = model.polar == 0
    features = fn(pos)[:, 0]
    rotation = torch.linalg.qr(
        torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    )[0]
    rotation = rotation * torch.det(rotation)
    torch.testing.assert_close(fn(pos @ rotation.T)[:, 0], features)
    mirrored = fn(pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))[:, 0]
    torch.testing.assert_close(mirrored[:, ~pseudo], features[:, ~pseudo], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mirrored[:, pseudo], -features[:, pseudo], rtol=1e-10, atol=1e-12)
    # weak at initialisation (~1e-7 relative here) but five orders of magnitude above round-off: the
    # representation is chiral, and training a chirality head makes it strong
    assert features[:, pseudo].abs().max() > 1e-9 * features[:, ~pseudo].abs().max()


@torch.no_grad()
def test_without_pseudo_channels_the_backbone_cannot_tell_handedness():
    z, pos = _alanine()
    model = _model(lmax=2, num_layers=3, activation="gate", pseudo_fraction=0.0)
    fn = _molecule_fn(model, z)
    mirrored = fn(pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(mirrored[:, 0], fn(pos)[:, 0], rtol=1e-10, atol=1e-12)


def _silicon_edges(
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cubic diamond silicon, 8 atoms, cell along x, y, z: each atom sees its own images along ±x, ±y, ±z."""
    atoms = bulk("Si", "diamond", cubic=True)
    pos, cell = atoms.positions, np.asarray(atoms.cell)
    sources, targets, shifts = [], [], []
    for i, j in itertools.product(range(len(atoms)), repeat=2):
        for shift in itertools.product((-1, 0, 1), repeat=3):
            length = np.linalg.norm(pos[j] + np.array(shift) @ cell - pos[i])
            if 0 < length < cutoff:
                sources.append(j), targets.append(i), shifts.append(shift)
    edge_index = torch.tensor([sources, targets])
    return (
        torch.tensor(atoms.numbers),
        torch.tensor(pos),
        torch.tensor(cell),
        edge_index,
        torch.tensor(shifts, dtype=torch.float64),
    )


def test_forces_have_finite_correct_second_derivatives_with_axis_aligned_edges():
    z, pos, cell, edge_index, shifts = _silicon_edges(cutoff=5.5)
    assert any((shifts.abs().sum(-1) == 1) & (edge_index[0] == edge_index[1]))
    model = _model(lmax=2, mmax=2, cutoff=5.5, activation="s2")
    readout = torch.randn(SMALL["channels"], dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def energy(positions: torch.Tensor) -> torch.Tensor:
        edge_vec = positions[edge_index[0]] - positions[edge_index[1]] + shifts @ cell
        x = model(z, edge_index, edge_vec, **_conditioning(len(z)))
        return (x[:, 0] @ readout).sum()

    def forces(positions: torch.Tensor) -> torch.Tensor:
        return -torch.autograd.grad(energy(positions), positions, create_graph=True)[0]

    positions = pos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(forces, (positions,), fast_mode=True)
    force_loss = forces(positions).pow(2).sum()
    grads = torch.autograd.grad(force_loss, list(model.parameters()), allow_unused=True)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert any(g is not None and g.abs().max() > 0 for g in grads)


@torch.no_grad()
def test_output_is_continuous_as_a_bond_stretches_across_the_cutoff():
    atoms = molecule("N2")
    z = torch.tensor(atoms.numbers)
    model = _model(lmax=2, cutoff=4.0)
    fn = _molecule_fn(model, z)
    direction = torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]], dtype=torch.float64)
    isolated = fn(direction * 10.0)
    just_inside = fn(direction * (4.0 - 1e-3))
    well_inside = fn(direction * 3.0)
    scale = float(isolated.abs().max())
    torch.testing.assert_close(just_inside, isolated, rtol=0, atol=1e-7 * scale)
    assert (well_inside - isolated).abs().max() > 1e-2 * scale


def test_activation_checkpointing_gives_identical_outputs_and_gradients():
    z, pos = _ethanol()
    results = []
    for checkpointing in (False, True):
        # ethanol's 72 edges in chunks of 50: the checkpointed attention's edge chunks are exercised too
        model = _model(lmax=2, activation_checkpointing=checkpointing, checkpoint_edge_chunk=50)
        positions = pos.clone().requires_grad_(True)
        x = _molecule_fn(model, z)(positions)
        (forces,) = torch.autograd.grad(x[:, 0].sum(), positions, create_graph=True)
        forces.pow(2).sum().backward()
        results.append((x, forces, [p.grad for p in model.parameters()]))
    (x, forces, grads), (x_ckpt, forces_ckpt, grads_ckpt) = results
    # the layers run without autograd and by chunks of edges, and their gradients reach the positions summed
    # in another order: equal to float64 round-off. At initialisation these features hardly depend on the
    # positions (largest force 1.4e-6 against features up to 3.5), so the round-off of the differently ordered
    # sums, set by the larger terms they add, reached 5e-12 of the largest force on one CPU (8e-18 absolute):
    # the bound is 1e-10 of it, still far below any real difference
    torch.testing.assert_close(x_ckpt, x, rtol=0, atol=1e-12 * float(x.abs().max()))
    torch.testing.assert_close(forces_ckpt, forces, rtol=0, atol=1e-10 * float(forces.abs().max()))
    for g, g_ckpt in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(g_ckpt, g)


def test_bf16_autocast_stays_close_to_float32():
    z, pos = _ethanol()
    torch.manual_seed(0)
    model = EquivariantTransformer(BackboneConfig(**{**SMALL, "channels": 16}))
    fn = _molecule_fn(model, z)
    positions = pos.float()
    reference = fn(positions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fn(positions.clone().requires_grad_(True))
    assert torch.isfinite(low).all()
    assert (low.float() - reference).norm() < 0.05 * reference.norm()


@torch.no_grad()
def test_conditioning_changes_the_output_and_rejects_out_of_range_values():
    z, pos = _ethanol()
    model = _model(lmax=1, mmax=1)
    xtb = _molecule_fn(model, z, level_of_theory=torch.tensor([level_index("gfn2-xtb")]))(pos)
    dft = _molecule_fn(model, z, level_of_theory=torch.tensor([level_index("wb97m-v")]))(pos)
    cation = _molecule_fn(model, z, charge=torch.tensor([1]))(pos)
    masked = _molecule_fn(model, torch.where(torch.arange(len(z)) == 0, 0, z))(pos)
    for other in (dft, cation, masked):
        assert (other - xtb).abs().max() > 1e-3
    with pytest.raises(BadInputError, match="field 'charge'.*entry 0 is 500"):
        _molecule_fn(model, z, charge=torch.tensor([500]))(pos)
    with pytest.raises(BadInputError, match="field 'edge_vec'.*zero length"):
        _molecule_fn(model, z)(torch.zeros_like(pos))


def test_config_round_trips_and_names_unknown_keys():
    cfg = backbone_config("small", cutoff=5.0)
    assert BackboneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="'chanels'"):
        BackboneConfig.from_dict({"chanels": 32})
    with pytest.raises(ValueError, match="lmax"):
        BackboneConfig(lmax=7)
    with pytest.raises(ValueError, match="mmax"):
        BackboneConfig(lmax=2, mmax=3)


def test_named_sizes_span_one_million_to_over_a_billion_parameters_without_allocating():
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = {name: count_backbone_parameters(backbone_config(name)) for name in SIZES}
    peak_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert list(counts) == ["tiny", "small", "base", "large", "xl"]
    assert 0.8e6 <= counts["tiny"] <= 1.5e6
    assert counts["xl"] >= 1e9
    assert list(counts.values()) == sorted(counts.values())
    assert peak_growth_kib < 1_000_000
    tiny = EquivariantTransformer(backbone_config("tiny"))
    assert counts["tiny"] == sum(p.numel() for p in tiny.parameters())
