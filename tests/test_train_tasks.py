"""Training tasks and the per-domain loss balance, on real structures with real labels and a real model.

Structures: water and L-alanine (GFN2-xTB labels from tblite), the Ala6-Pro-Ala6 helix shipped with
MDAnalysisTests (a protein, unlabelled), and a rattled, strained Cu cell (EMT energy, forces, stress).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ase.io
import biotite.structure.info as ccd
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from tblite.ase import TBLite
from torch.testing import assert_close
from torch_geometric.data import Batch

from data_pipeline.config_mapping import ConfigOrigin
from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import DOMAINS, BadInputError, Structure, validate
from model.atomfm import AtomFM, model_config
from train.loss_balance import balance_losses
from train.tasks import TASKS, CorruptionState, LossTerms, task_settings
from train.tasks.contrast import infonce_terms

CUTOFF = 4.0


def labelled(atoms: Atoms, key: str, domain: str, level: str, group: str) -> Structure:
    periodic = bool(atoms.pbc.any())
    energy = forces = stress = None
    if atoms.calc is not None:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        stress = atoms.get_stress(voigt=False) if periodic else None
    residues = atoms.arrays.get("residuenumbers")
    return validate(
        Structure(
            key=key,
            domain=domain,
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array if periodic else None,
            pbc=atoms.pbc,
            level_of_theory=level,
            energy=energy,
            forces=forces,
            stress=stress,
            group_id=group,
            per_atom={} if residues is None else {"residue_index": residues - residues.min()},
        )
    )


def water() -> Structure:
    atoms = molecule("H2O")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    return labelled(atoms, "test/water", "molecule", "gfn2-xtb", "water")


def alanine(conformer: int = 0) -> Structure:
    residue = ccd.residue("ALA")
    atoms = Atoms([e.capitalize() for e in residue.element], positions=residue.coord.astype(np.float64))
    atoms.rattle(0.02, seed=conformer)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    return labelled(atoms, f"test/alanine/{conformer}", "molecule", "gfn2-xtb", "alanine")


def peptide() -> Structure:
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    return labelled(ase.io.read(data / "A6PA6_alpha.pdb"), "test/a6pa6", "protein", "none", "a6pa6")


def copper() -> Structure:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.set_cell(atoms.cell.array @ np.diag([1.01, 0.99, 1.0]), scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    return labelled(atoms, "test/cu", "material", "emt", "Cu")


@pytest.fixture(scope="module")
def structures() -> dict[str, Structure]:
    return {
        "water": water(),
        "alanine": alanine(0),
        "alanine2": alanine(1),
        "peptide": peptide(),
        "copper": copper(),
    }


def batch_of(*structures: Structure) -> Batch:
    return Batch.from_data_list([structure_to_graph(s, CUTOFF) for s in structures])


@pytest.fixture(scope="module")
def model() -> AtomFM:
    torch.manual_seed(0)
    return AtomFM(
        model_config(
            "tiny",
            channels=16,
            num_layers=1,
            num_heads=2,
            attn_channels=8,
            ffn_channels=16,
            radial_channels=16,
            cutoff=CUTOFF,
        )
    ).train()


def task(name: str, **settings):
    cls = TASKS[name]
    return cls(cls.Settings(**settings))


def corrupt(batch: Batch, *tasks, step: int = 0) -> CorruptionState:
    state = CorruptionState.for_batch(batch, seed=11, step=step, micro=0)
    for t in tasks:
        t.corrupt(batch, state)
    return state


def test_denoise_moves_chosen_structures_by_sigma_times_the_target(structures):
    batch = batch_of(structures["water"], structures["peptide"], structures["copper"])
    clean = batch.pos.clone()
    state = corrupt(batch, task("denoise", fraction=1.0, sigma_min=0.02, sigma_max=0.08))
    assert state.claimed["denoise"].tolist() == [True, True, True]
    shift = (batch.pos - clean).double()
    eps = state.noise_target.double()
    for g in range(3):
        atoms = batch.batch == g
        sigma = (shift[atoms] * eps[atoms]).sum() / eps[atoms].pow(2).sum()
        assert 0.02 <= float(sigma) <= 0.08
        assert_close(shift[atoms], sigma * eps[atoms], rtol=1e-4, atol=1e-6)
    helix = eps[batch.batch == 1]
    assert 0.7 < float(helix.pow(2).mean()) < 1.3


def test_denoise_leaves_unchosen_structures_alone_and_claims_them_for_no_one_else(structures):
    batch = batch_of(*(alanine(k) for k in range(12)))
    clean_pos, clean_z = batch.pos.clone(), batch.z.clone()
    state = corrupt(batch, task("denoise", fraction=0.5))
    chosen = state.claimed["denoise"]
    assert 0 < int(chosen.sum()) < 12
    moved = (batch.pos != clean_pos).any(dim=1)
    assert torch.equal(moved, chosen[batch.batch])
    assert torch.equal(batch.z, clean_z) and torch.equal(state.clean, ~chosen)


def test_corruption_of_a_structure_does_not_depend_on_its_batch(structures):
    """Same (seed, step, micro, key) → same noise and mask, wherever the structure lands: two ranks corrupt
    exactly as one process would, and a resumed run repeats an uninterrupted one."""
    tasks = [task("denoise", fraction=1.0), task("masked_atoms", structure_fraction=1.0)]
    alone = batch_of(structures["peptide"])
    mixed = batch_of(structures["water"], structures["copper"], structures["peptide"])
    state_alone, state_mixed = corrupt(alone, *tasks), corrupt(mixed, *tasks)
    in_mixed = mixed.batch == 2
    assert torch.equal(alone.pos, mixed.pos[in_mixed])
    assert torch.equal(alone.z, mixed.z[in_mixed])
    assert torch.equal(state_alone.noise_target, state_mixed.noise_target[in_mixed])
    later = batch_of(structures["peptide"])
    corrupt(later, *tasks, step=1)
    assert not torch.equal(later.pos, alone.pos)


def test_dens_feeds_clean_forces_of_noised_labelled_structures_only(structures):
    batch = batch_of(structures["water"], structures["peptide"], structures["copper"])
    forces = batch.forces.clone()
    state = corrupt(batch, task("dens", fraction=1.0), task("denoise", fraction=1.0))
    assert state.claimed["dens"].tolist() == [True, False, True]
    assert state.claimed["denoise"].tolist() == [False, True, False]
    labelled_atoms = state.claimed["dens"][batch.batch]
    assert torch.equal(batch.dens_forces[labelled_atoms], forces[labelled_atoms])
    assert torch.count_nonzero(batch.dens_forces[~labelled_atoms]) == 0
    assert torch.count_nonzero(forces[labelled_atoms]) > 0


def test_noise_prediction_loss_is_the_per_atom_mse_against_epsilon(structures, model):
    batch = batch_of(structures["water"], structures["peptide"])
    denoise = task("denoise", fraction=1.0)
    state = corrupt(batch, denoise)
    out = model(batch, outputs=("noise",))
    terms = denoise.loss_terms(batch, out, state)
    assert_close(terms.values, (out["noise"] - state.noise_target).pow(2).mean(dim=1))
    assert terms.domain.tolist() == [0] * 3 + [1] * int((batch.batch == 1).sum())


def test_masked_atoms_hide_a_fraction_and_score_the_true_elements(structures, model):
    batch = batch_of(structures["peptide"], structures["alanine"])
    true_z = batch.z.clone()
    masked = task("masked_atoms", structure_fraction=1.0, atom_fraction=0.15)
    state = corrupt(batch, masked)
    for g in range(2):
        atoms = batch.batch == g
        assert int((batch.z[atoms] == 0).sum()) == max(1, round(0.15 * int(atoms.sum())))
    assert torch.equal(batch.z == 0, state.masked_atoms)
    out = model(batch, outputs=("atom_logits",))
    terms = masked.loss_terms(batch, out, state)
    hidden = state.masked_atoms
    assert_close(terms.values, F.cross_entropy(out["atom_logits"][hidden], true_z[hidden], reduction="none"))
    assert not state.clean.any()


def test_regression_uses_clean_labelled_structures_with_per_atom_energy(structures, model):
    batch = batch_of(structures["water"], structures["peptide"], structures["copper"], structures["alanine"])
    state = corrupt(batch)
    out = model(batch, outputs=("energy", "forces", "stress"), conservative=True)
    energy = task("energy").loss_terms(batch, out, state)
    labelled_graphs = torch.tensor([0, 2, 3])
    natoms = batch.natoms[labelled_graphs].double()
    expected = (
        (out["energy"][labelled_graphs].double() - batch.energy[labelled_graphs].double()) / natoms
    ) ** 2
    assert_close(energy.values.double(), expected, rtol=1e-5, atol=1e-6)
    assert energy.domain.tolist() == [0, 2, 0]

    forces = task("forces", error="l2").loss_terms(batch, out, state)
    atoms = batch.has_forces[batch.batch]
    assert_close(forces.values, torch.linalg.vector_norm(out["forces"][atoms] - batch.forces[atoms], dim=1))

    stress = task("stress").loss_terms(batch, out, state)
    assert_close(stress.values, (out["stress"][2] - batch.stress[2]).pow(2).mean()[None])
    assert stress.domain.tolist() == [2]


def test_regression_skips_structures_a_corrupting_task_altered(structures, model):
    batch = batch_of(structures["water"], structures["copper"], structures["alanine"])
    state = corrupt(batch, task("dens", fraction=1.0))
    out = model(batch, outputs=("energy", "forces"), conservative=False)
    assert task("energy").loss_terms(batch, out, state).values.numel() == 0
    assert task("forces").loss_terms(batch, out, state).values.numel() == 0


def test_infonce_matches_the_supervised_contrastive_formula():
    torch.manual_seed(2)
    emb = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1)
    groups = torch.tensor([1, 1, 2, 3, 4])
    queue_groups = torch.tensor([2, 9, 1])
    tau = 0.2
    values, has_positive = infonce_terms(emb, groups, queue, queue_groups, tau)
    assert has_positive.tolist() == [True, True, True, False, False]
    candidates = torch.cat([emb, queue])
    all_groups = torch.cat([groups, queue_groups])
    expected = []
    for i in range(3):
        others = [j for j in range(8) if j != i]
        log_norm = torch.logsumexp(torch.stack([emb[i] @ candidates[j] / tau for j in others]), dim=0)
        positives = [j for j in others if all_groups[j] == groups[i]]
        expected.append(-sum(emb[i] @ candidates[j] / tau - log_norm for j in positives) / len(positives))
    assert_close(values, torch.stack(expected))


def test_contrast_finds_positives_through_its_queue(structures, model):
    contrast = task("contrast", temperature=0.1, queue_size=8)
    first = batch_of(structures["alanine"], structures["water"])
    terms = contrast.loss_terms(first, model(first, outputs=("embedding",)), corrupt(first))
    assert terms.values.numel() == 0 and contrast.queue.shape[0] == 2
    second = batch_of(structures["alanine2"], structures["copper"])
    terms = contrast.loss_terms(second, model(second, outputs=("embedding",)), corrupt(second))
    assert terms.values.numel() == 1 and terms.domain.tolist() == [0]
    assert torch.isfinite(terms.values).all() and contrast.queue.shape[0] == 4


def capture(vector: torch.Tensor, store: list) -> torch.Tensor:
    store.append(vector.clone())
    return vector


def test_each_domain_counts_equally_however_many_atoms_it_has():
    mol = LossTerms(values=torch.full((3,), 2.0), domain=torch.zeros(3, dtype=torch.long))
    protein = LossTerms(values=torch.full((300,), 8.0), domain=torch.ones(300, dtype=torch.long))
    both = LossTerms(
        values=torch.cat([mol.values, protein.values]), domain=torch.cat([mol.domain, protein.domain])
    )
    loss = balance_losses({"denoise": both}, {"denoise": 0.5}, world_size=1, all_reduce_sum=lambda v: v)
    assert loss.per_task_domain["denoise"] == {"molecule": 2.0, "protein": 8.0}
    assert loss.per_task["denoise"] == 5.0 and loss.value == 2.5
    assert_close(loss.total, torch.tensor(2.5))
    assert DOMAINS[:2] == ("molecule", "protein")


def test_two_ranks_get_the_gradient_of_the_global_batch(structures, model):
    """Each rank normalises by the global counts: the mean of the ranks' gradients equals one process's
    gradient over both halves, though the halves hold different domain mixes."""
    batches = [
        batch_of(structures["water"], structures["peptide"]),
        batch_of(structures["copper"], structures["alanine"], structures["alanine2"]),
    ]
    names = ("denoise", "forces", "energy")

    def rank_terms(batch: Batch) -> dict[str, LossTerms]:
        tasks = [task("denoise", fraction=0.5), task("forces"), task("energy")]
        state = corrupt(batch, *tasks)
        out = model(batch, outputs=("noise", "forces", "energy"), conservative=True)
        return {t.name: t.loss_terms(batch, out, state) for t in tasks}

    weights = dict(zip(names, (1.0, 2.0, 0.5), strict=True))

    def grads_of(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    packed: list[list[torch.Tensor]] = [[], []]
    for r in range(2):
        balance_losses(
            rank_terms(batches[r].clone()),
            weights,
            world_size=2,
            all_reduce_sum=lambda v, r=r: capture(v, packed[r]),
        )
    per_rank = []
    for r in range(2):
        other = packed[1 - r][0]
        loss = balance_losses(
            rank_terms(batches[r].clone()),
            weights,
            world_size=2,
            all_reduce_sum=lambda v, other=other: v + other,
        )
        per_rank.append(grads_of(loss.total))
    merged = Batch.from_data_list(batches[0].to_data_list() + batches[1].to_data_list())
    single = balance_losses(rank_terms(merged), weights, world_size=1, all_reduce_sum=lambda v: v)
    assert loss.value == pytest.approx(single.value, rel=1e-5)
    for g0, g1, g in zip(*per_rank, grads_of(single.total), strict=True):
        assert_close((g0 + g1) / 2, g, rtol=1e-4, atol=1e-6)


def test_domain_weights_weigh_a_tasks_domains():
    """tasks.<name>.domain_weights: the task's loss is the weighted mean of its per-domain means; a domain
    absent from the batch drops out of the weights; the gradient of each item scales the same way."""
    values = torch.cat([torch.full((3,), 2.0), torch.full((300,), 8.0)]).requires_grad_()
    terms = {"forces": LossTerms(values=values, domain=torch.cat([torch.zeros(3), torch.ones(300)]).long())}
    weights = {"molecule": 3.0, "protein": 1.0, "material": 5.0}
    vector = task("forces", domain_weights=weights).settings.domain_weight_vector()
    assert vector == [weights[d] for d in DOMAINS]
    loss = balance_losses(
        terms, {"forces": 2.0}, world_size=1, all_reduce_sum=lambda v: v, domain_weights={"forces": vector}
    )
    assert loss.per_task["forces"] == pytest.approx((3 * 2.0 + 1 * 8.0) / 4)  # no material present
    assert loss.value == pytest.approx(2 * 3.5)
    loss.total.backward()
    assert_close(values.grad[:3], torch.full((3,), 2.0 * 3 / 4 / 3))
    assert_close(values.grad[3:], torch.full((300,), 2.0 * 1 / 4 / 300))
    # equal weights are the unweighted balance, to the bit
    plain = balance_losses(terms, {"forces": 2.0}, world_size=1, all_reduce_sum=lambda v: v)
    ones = balance_losses(
        terms, {"forces": 2.0}, world_size=1, all_reduce_sum=lambda v: v, domain_weights={"forces": [1.0] * 3}
    )
    assert plain.value == ones.value and torch.equal(plain.total, ones.total)


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ({"molecul": 2.0}, "did you mean 'molecule'"),
        ({"molecule": -1.0}, "must be a finite number"),
        ({d: 0.0 for d in DOMAINS}, "every domain has weight 0"),
    ],
)
def test_bad_domain_weights_are_named(weights, problem):
    with pytest.raises(BadInputError, match=problem) as err:
        task_settings("forces", {"domain_weights": weights}, ConfigOrigin("cfg.yaml"))
    assert "tasks.forces.domain_weights" in str(err.value)


def test_a_nan_anywhere_makes_every_rank_skip():
    terms = {"energy": LossTerms(values=torch.tensor([0.1, float("nan")]), domain=torch.tensor([0, 0]))}
    assert not balance_losses(terms, {"energy": 1.0}, world_size=1, all_reduce_sum=lambda v: v).finite
    fine = {"energy": LossTerms(values=torch.tensor([0.1]), domain=torch.tensor([0]))}
    poisoned = torch.tensor(float("nan"))
    assert not balance_losses(
        fine, {"energy": 1.0}, world_size=1, all_reduce_sum=lambda v: v, anchor=poisoned
    ).finite
    assert balance_losses(fine, {"energy": 1.0}, world_size=1, all_reduce_sum=lambda v: v).finite
