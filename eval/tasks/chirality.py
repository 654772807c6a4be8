"""Chirality: can a head on the model's features tell L- from D-amino acids, where the energy cannot?

The task builds its own data: RDKit (ETKDG) conformers of the 19 chiral proteinogenic amino acids in
their natural L form, and the exact mirror image of each (the D enantiomer). A logistic-regression head is
fitted on pooled per-molecule features of the training conformers and scored on held-out conformers (split
by conformer index, both enantiomers of a conformer always on the same side):

- ``handed_accuracy``: the head reads the backbone's pseudo-scalars (``HeadInput.pseudo_scalars``), which
  change sign under a mirror: per atom, the pseudo-scalars and their products with the atom's polar
  invariants (odd, like the pseudo-scalars), summed over atoms; an odd (bias-free) linear head on them,
  scale-normalised, so its logit changes sign between enantiomers;
- ``invariant_accuracy``: the same head on the polar invariants (the features the energy reads), an
  E(3)-invariant baseline: the two enantiomers have identical features, so it must sit at 50%;
- ``energy_gap``: |E(L) − E(D)| per atom, meV, which physics (and the model) makes zero.

Only for checkpoints (the features are the model's own). ``conformers`` per amino acid (default 8, half
for training).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import Structure
from eval.data import EvalData
from eval.metrics import fraction_metric, mean_metric
from eval.tasks.base import EvalTask, Predictor

# The chiral proteinogenic amino acids, L form (isoleucine and threonine with their natural second centre).
L_AMINO_ACIDS = {
    "ALA": "N[C@@H](C)C(=O)O",
    "ARG": "N[C@@H](CCCNC(=N)N)C(=O)O",
    "ASN": "N[C@@H](CC(=O)N)C(=O)O",
    "ASP": "N[C@@H](CC(=O)O)C(=O)O",
    "CYS": "N[C@@H](CS)C(=O)O",
    "GLN": "N[C@@H](CCC(=O)N)C(=O)O",
    "GLU": "N[C@@H](CCC(=O)O)C(=O)O",
    "HIS": "N[C@@H](Cc1cnc[nH]1)C(=O)O",
    "ILE": "N[C@@H]([C@@H](C)CC)C(=O)O",
    "LEU": "N[C@@H](CC(C)C)C(=O)O",
    "LYS": "N[C@@H](CCCCN)C(=O)O",
    "MET": "N[C@@H](CCSC)C(=O)O",
    "PHE": "N[C@@H](Cc1ccccc1)C(=O)O",
    "PRO": "N1[C@@H](CCC1)C(=O)O",
    "SER": "N[C@@H](CO)C(=O)O",
    "THR": "N[C@@H]([C@H](O)C)C(=O)O",
    "TRP": "N[C@@H](Cc1c[nH]c2ccccc12)C(=O)O",
    "TYR": "N[C@@H](Cc1ccc(O)cc1)C(=O)O",
    "VAL": "N[C@@H](C(C)C)C(=O)O",
}


def amino_acid_enantiomers(conformers: int, seed: int) -> list[tuple[str, int, Structure, Structure]]:
    """(name, conformer index, L structure, its mirror image D) for every amino acid and conformer."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    out = []
    for name, smiles in L_AMINO_ACIDS.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        params = AllChem.ETKDGv3()
        params.randomSeed = seed
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=conformers, params=params))
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.uint8)
        for k, conf_id in enumerate(ids):
            pos = mol.GetConformer(conf_id).GetPositions()
            left = Structure(
                key=f"chirality/{name}/L/{k}", domain="molecule", atomic_numbers=z, positions=pos
            )
            mirror = pos * np.array([-1.0, 1.0, 1.0])
            right = Structure(
                key=f"chirality/{name}/D/{k}", domain="molecule", atomic_numbers=z, positions=mirror
            )
            out.append((name, k, left, right))
    return out


class Chirality(EvalTask):
    name = "chirality"
    primary_metric = "handed_accuracy"
    description = "L/D amino acids told apart by a head on pseudo-scalar features, beside an invariant head"

    def __init__(self, conformers: int = 8) -> None:
        self.conformers = conformers

    def applies_to(self, data: EvalData) -> str | None:
        return None  # the task brings its own molecules

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        model = getattr(predictor, "model", None)
        if model is None:
            return {"metrics": {}, "details": {"not_applicable": "needs a checkpoint's own features"}}
        pairs = amino_acid_enantiomers(self.conformers, seed)
        level = model.config.main_level_of_theory
        structures = [s for _, _, left, right in pairs for s in (left, right)]
        handed, polar, energy = self._features(model, structures, level)
        labels = np.tile([1.0, 0.0], len(pairs))  # 1: L, 0: D
        train = np.repeat([k < self.conformers // 2 for _, k, _, _ in pairs], 2)
        energy_gap = np.abs(energy[0::2] - energy[1::2]) / np.array([p[2].num_atoms for p in pairs]) * 1000.0
        metrics = {
            "handed_accuracy": fraction_metric(_probe(handed, labels, train, odd=True), seed=seed),
            "invariant_accuracy": fraction_metric(_probe(polar, labels, train, odd=False), seed=seed),
            "energy_gap": mean_metric(energy_gap, unit="meV/atom", seed=seed),
        }
        details = {
            "amino_acids": sorted(L_AMINO_ACIDS),
            "conformers_per_enantiomer": self.conformers,
            "train_structures": int(train.sum()),
            "test_structures": int((~train).sum()),
            "pseudo_channels": int(handed.shape[1]),
            "pseudo_scalar_scale": float(np.abs(handed).mean()),
            "polar_scalar_scale": float(np.abs(polar).mean()),
        }
        return {"metrics": {"molecule": {k: v.to_dict() for k, v in metrics.items()}}, "details": details}

    @staticmethod
    def _features(
        model: Any, structures: list[Structure], level: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-structure sums of the handed features (pseudo-scalars p and products p ⊗ q with the polar
        invariants q) [S, P (1 + C - P)], of the polar invariants [S, C - P], and energies [S] eV."""
        from dataclasses import replace

        cutoff, levels = model.config.backbone.cutoff, model.config.levels_of_theory
        graphs = [structure_to_graph(replace(s, level_of_theory=level), cutoff, levels) for s in structures]
        batch = Batch.from_data_list(graphs).to(model.reference_energies.energies.device)
        batch.pos, batch.cell = batch.pos.to(model.dtype), batch.cell.to(model.dtype)
        with torch.no_grad():
            src, dst = batch.edge_index
            x = model.backbone(
                batch.z,
                batch.edge_index,
                batch.pos[src] - batch.pos[dst],
                batch.batch,
                batch.charge,
                batch.spin,
                batch.level_of_theory,
                batch.domain,
            )
            energy = model(batch, ("energy",))["energy"]
        pseudo = model.backbone.polar == 0
        p, q = x[:, 0, pseudo], x[:, 0, ~pseudo]
        per_atom_handed = torch.cat([p, (p.unsqueeze(-1) * q.unsqueeze(-2)).flatten(1)], dim=1)

        def pooled(values: torch.Tensor) -> np.ndarray:
            out = values.new_zeros(batch.num_graphs, values.shape[1]).index_add(0, batch.batch, values)
            return out.double().numpy()

        return pooled(per_atom_handed), pooled(q), energy.double().numpy()


def _probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray, *, odd: bool) -> np.ndarray:
    """Fit logistic regression on the training rows; 0/1 correctness of each test row. ``odd``: no bias and
    no centring, so the head's logit changes sign with the features (a mirror-aware head)."""
    x = torch.as_tensor(features, dtype=torch.float64)
    scale = x[torch.as_tensor(train)].abs().mean(dim=0).clamp_min(1e-300)
    x = x / scale
    if not odd:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    y = torch.as_tensor(labels, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")
    rows = torch.as_tensor(train)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(x[rows] @ w, y[rows]) + 1e-4 * w.pow(2).sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = x[~rows] @ w
    # a logit of exactly 0 (identical features) is no decision: counted as wrong half the time, i.e. chance
    correct = ((logits > 0).double() == y[~rows]).double()
    correct[logits == 0] = 0.5
    return correct.numpy()
