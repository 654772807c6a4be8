"""The ASE calculator: how a trained model relaxes structures and runs molecular dynamics.

    calc = AtomFMCalculator.from_checkpoint("runs/demo/export", level_of_theory="gfn2-xtb")
    atoms.calc = calc
    BFGS(atoms).run(fmax=0.05)

One checkpoint answers as any level of theory it was trained on (default: the model's main one). The
total charge and spin multiplicity come from the constructor, else from ``atoms.info["charge"]`` /
``atoms.info["spin"]``, else 0 and 1. The domain is ``atoms.info["domain"]`` when given, else ``material``
for periodic structures and ``molecule`` otherwise.

Forces are what the checkpoint was trained on (its ``model_config.json`` says ``conservative_forces``):
−∂E/∂x for a conservatively trained model, as MD needs. A checkpoint trained on direct forces only gets a
warning and still serves −∂E/∂x (which its training never shaped), unless ``forces="direct"`` asks for its
direct head: then ``conserves_energy`` is False, and tools that need energy conservation (NVE MD, the
``md_drift`` evaluation) refuse it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import DOMAINS, Structure, validate
from data_pipeline.vocab import LEVELS_OF_THEORY
from model.atomfm import AtomFM, model_config
from model.checkpoint_io import load_model
from model.coverage import closest_pair

FORCE_MODES = ("auto", "conservative", "direct")


class UntrainedForcesWarning(UserWarning):
    """The calculator serves forces the checkpoint was not trained to give."""


class UnseenElementWarning(UserWarning):
    """The structure holds an element the checkpoint never saw in training."""


class CloseContactWarning(UserWarning):
    """Two atoms are far closer than any pair the checkpoint saw in training."""


CLOSE_CONTACT_FRACTION = 0.75  # warn below this fraction of the shortest training distance


class AtomFMCalculator(Calculator):
    """ASE calculator around an :class:`AtomFM` (energy eV, forces eV/Å, stress eV/Å³, charges e,
    dipole e·Å)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "charges", "dipole"]

    def __init__(
        self,
        model: AtomFM,
        level_of_theory: str | None = None,
        charge: int | None = None,
        spin: int | None = None,
        domain: str | None = None,
        device: str | torch.device | None = None,
        forces: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if forces not in FORCE_MODES:
            raise ValueError(f"forces must be one of {', '.join(FORCE_MODES)}, got {forces!r}")
        level = (level_of_theory or model.config.main_level_of_theory).lower()
        if level not in model.config.levels_of_theory:
            raise ValueError(
                f"unknown level of theory {level_of_theory!r}; this model knows "
                f"{', '.join(model.config.levels_of_theory)}"
            )
        if domain is not None and domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
        if "energy" not in model.heads:
            raise ValueError("the model has no energy head; an ASE calculator needs energies and forces")
        if forces == "direct" and "forces_direct" not in model.heads:
            raise ValueError(
                "forces='direct' needs the model's direct force head (forces_direct); it has none"
            )
        self.model = model.to(device) if device is not None else model
        self.model.eval()
        self._warned_elements: set[int] = set()
        self._warned_contact = False
        self.level_of_theory, self.charge, self.spin, self.domain = level, charge, spin, domain
        self.conservative = forces != "direct"
        if forces == "auto" and not model.config.conservative_forces:
            warnings.warn(
                "this checkpoint was trained on direct forces only (conservative_forces: false): its −∂E/∂x "
                "forces were never trained and may be far off. Fine-tune it with conservative forces, or pass "
                "forces='direct' to serve its direct force head (not energy-conserving: no NVE MD)",
                UntrainedForcesWarning,
                stacklevel=2,
            )

    @property
    def conserves_energy(self) -> bool:
        """Whether the forces are −∂E/∂x of the energy served (False for the direct head)."""
        return self.conservative

    @classmethod
    def from_config(
        cls,
        name: str,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        calculator_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> AtomFMCalculator:
        """An untrained model of a named size (``atomfm model list``); ``overrides`` go to
        :func:`model.atomfm.model_config`. Useful for tests and timing, not for predictions."""
        torch.manual_seed(seed)
        model = AtomFM(model_config(name, **overrides)).to(device=device, dtype=dtype)
        return cls(model, **(calculator_options or {}))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        **options: Any,
    ) -> AtomFMCalculator:
        """The model in an export or training checkpoint folder (see :func:`model.checkpoint_io.load_model`)."""
        return cls(load_model(path, device=device, dtype=dtype), **options)

    @property
    def cutoff(self) -> float:
        return self.model.config.backbone.cutoff

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        periodic = bool(self.atoms.pbc.any())
        batch = self.batch_of([self.atoms])
        self._warn_outside_training(batch)
        outputs = ["energy", "forces"] + (["stress"] if periodic else [])
        if "charges" in self.model.heads:
            outputs += ["charges"] + ([] if periodic else ["dipole"])
        out = self.model(batch, outputs=outputs, conservative=self.conservative)
        energy = float(out["energy"][0].detach())
        self.results = {"energy": energy, "free_energy": energy, "forces": _numpy(out["forces"])}
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(_numpy(out["stress"][0]))
        if "charges" in out:
            self.results["charges"] = _numpy(out["charges"])
        if "dipole" in out:
            self.results["dipole"] = _numpy(out["dipole"][0])

    def _warn_outside_training(self, batch: Batch) -> None:
        """Once per calculator: each element the checkpoint never trained on, and the first close contact far
        below its shortest training distance (the checkpoint's ``coverage``; none recorded, no warning)."""
        coverage = self.model.config.coverage
        if coverage is None:
            return
        unseen = sorted(set(batch.z.tolist()) - set(coverage.elements) - self._warned_elements)
        if unseen:
            self._warned_elements.update(unseen)
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unseen)
            warnings.warn(
                f"{names} never appeared in this checkpoint's training data: its energies and forces for "
                "structures with it are untrained extrapolation",
                UnseenElementWarning,
                stacklevel=3,
            )
        contact = closest_pair(batch)
        if self._warned_contact or contact is None or coverage.shortest_distance is None:
            return
        distance, i, j = contact
        if distance < CLOSE_CONTACT_FRACTION * coverage.shortest_distance:
            self._warned_contact = True
            prior = (
                "the ZBL repulsion prior still pushes them apart"
                if self.model.zbl is not None
                else "this model has no short-range prior (a model with model.overrides.zbl: true has)"
            )
            warnings.warn(
                f"atoms {i} ({chemical_symbols[int(batch.z[i])]}) and {j} ({chemical_symbols[int(batch.z[j])]}) "
                f"are {distance:.3f} Å apart, far closer than any pair in this checkpoint's training data "
                f"(shortest {coverage.shortest_distance:.3f} Å): the learned energy there is extrapolation; "
                f"{prior}",
                CloseContactWarning,
                stacklevel=3,
            )

    def batch_of(self, atoms_list: list[Atoms]) -> Batch:
        """The batch this calculator's model reads for ``atoms_list``, with its level of theory, charge, spin
        and domain, in the model's dtype and on its device."""
        return atoms_to_batch(
            atoms_list,
            self.cutoff,
            level_of_theory=self.level_of_theory,
            charge=self.charge,
            spin=self.spin,
            domain=self.domain,
            dtype=self.model.dtype,
            device=self.model.reference_energies.energies.device,
            levels=self.model.config.levels_of_theory,
        )


def atoms_to_batch(
    atoms_list: list[Atoms],
    cutoff: float,
    level_of_theory: str = "none",
    charge: int | None = None,
    spin: int | None = None,
    domain: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    levels: tuple[str, ...] | list[str] = LEVELS_OF_THEORY,
) -> Batch:
    """A batch (``docs/batch.md``) of ASE structures, built by the data pipeline (validation, neighbour list
    with periodic images under ``cutoff`` Å), with positions and cells in ``dtype``.

    charge, spin, domain: for every structure, else each one's ``atoms.info`` (default 0, 1, and ``material``
    when periodic else ``molecule``). ``atoms.arrays["residuenumbers"]`` (ASE's PDB reader) become ``residue_id``.
    """
    graphs = []
    for index, atoms in enumerate(atoms_list):
        periodic = bool(atoms.pbc.any())
        residues = atoms.arrays.get("residuenumbers")
        structure = validate(
            Structure(
                key=str(atoms.info.get("key", f"ase/{index}")),
                domain=domain or atoms.info.get("domain") or ("material" if periodic else "molecule"),
                atomic_numbers=atoms.numbers,
                positions=atoms.positions,
                cell=atoms.cell.array if periodic else None,
                pbc=atoms.pbc,
                charge=int(charge if charge is not None else atoms.info.get("charge", 0)),
                spin=int(spin if spin is not None else atoms.info.get("spin", 1)),
                level_of_theory=level_of_theory,
                per_atom={} if residues is None else {"residue_index": np.asarray(residues, dtype=np.int64)},
            )
        )
        graph = structure_to_graph(structure, cutoff, levels)
        graph.pos = torch.as_tensor(atoms.positions, dtype=dtype)
        graph.cell = torch.as_tensor(atoms.cell.array if periodic else np.zeros((3, 3)), dtype=dtype).reshape(
            1, 3, 3
        )
        graphs.append(graph)
    batch = Batch.from_data_list(graphs)
    return batch if device is None else batch.to(device)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()
