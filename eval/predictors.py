"""What is evaluated: an atomfm checkpoint, any ASE calculator, or the per-element reference baseline.

Every predictor gives batched predictions (``predict``) for the accuracy tasks and an ASE calculator
(``calculator``) for the physics tasks (relaxation, equation of state, MD), and says who it is (``identity``:
name, kind, path, sha256 of the weights, config, what its forces are).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from data_pipeline.schema import BadInputError, Structure
from data_pipeline.shards import sha256_of
from data_pipeline.vocab import LEVELS_OF_THEORY, extend_levels, level_index
from model.atomfm import AtomFM
from model.checkpoint_io import load_model
from model.checkpoint_layout import CheckpointFolder, resolve_checkpoint
from model.predict import Prediction, force_kind, predict_structures
from model.reference_energies import energy_labels, fit_with_ridge


def structure_to_atoms(s: Structure) -> Atoms:
    """An ASE ``Atoms`` of a structure, carrying its charge, spin and domain in ``info``."""
    atoms = Atoms(
        numbers=np.asarray(s.atomic_numbers, dtype=int),
        positions=np.asarray(s.positions, dtype=np.float64),
        cell=None if s.cell is None else np.asarray(s.cell, dtype=np.float64),
        pbc=np.asarray(s.pbc, dtype=bool),
    )
    atoms.info.update(charge=int(s.charge), spin=int(s.spin), domain=s.domain, key=s.key)
    return atoms


class CheckpointPredictor:
    """An atomfm export or training checkpoint. ``forces``: None (what it was trained on), or ``conservative``
    / ``direct`` to override; each structure is predicted at its own level of theory (``none``: the
    checkpoint's main level)."""

    kind = "checkpoint"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        forces: str | None = None,
        dtype: torch.dtype = torch.float32,
        max_atoms: int = 2048,
    ) -> None:
        folder = Path(path)
        if folder.is_dir() and not CheckpointFolder(folder).model_config.is_file():
            folder = resolve_checkpoint(folder)  # a run folder: its latest checkpoint
        self.path = folder
        self.model = load_model(folder, dtype=dtype)
        self.forces = forces or force_kind(self.model)
        self.max_atoms = max_atoms
        self.name = name or _default_name(folder)
        self._float64: AtomFM | None = None

    def identity(self) -> dict[str, Any]:
        files = CheckpointFolder(self.path)
        weights = next((p for p in (files.export_weights, files.ddp) if p.is_file()), None)
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "weights_sha256": sha256_of(weights) if weights else _folder_sha256(files.deepspeed),
            "config": self.model.config.to_dict(),
            "forces": self.forces,
            "trained_forces": force_kind(self.model),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "training_curve": training_curve(self.path),
            "training": training_summary(self.path),
        }

    def _level(self, s: Structure) -> Structure:
        if s.level_of_theory == "none":
            return replace(s, level_of_theory=self.model.config.main_level_of_theory)
        if s.level_of_theory not in self.model.config.levels_of_theory:
            raise BadInputError(
                f"the checkpoint was not trained at level {s.level_of_theory!r}; it knows "
                f"{', '.join(self.model.config.levels_of_theory)} (fine-tune it on data of that level)",
                path=str(self.path),
                record=s.key,
                field="level_of_theory",
            )
        return s

    def predict(self, structures: Iterable[Structure]) -> Iterator[tuple[Structure, Prediction]]:
        originals: list[Structure] = []

        def at_level() -> Iterator[Structure]:
            for s in structures:
                originals.append(s)
                yield self._level(s)

        for i, (_, prediction) in enumerate(
            predict_structures(self.model, at_level(), forces=self.forces, max_atoms=self.max_atoms)
        ):
            yield originals[i], prediction

    def calculator(self, level_of_theory: str | None = None) -> Calculator:
        from model.calculator import AtomFMCalculator

        level = None if level_of_theory in (None, "none") else level_of_theory
        if self._float64 is None:  # a copy: the batched predictions keep their own dtype
            self._float64 = copy.deepcopy(self.model).double()
        return AtomFMCalculator(self._float64, level_of_theory=level, forces=self.forces)


class CalculatorPredictor:
    """Any ASE calculator, made by ``module:factory`` (``ase.calculators.emt:EMT``, a MACE or fairchem
    factory, ...), optionally with keyword arguments. Structures are predicted one at a time."""

    kind = "calculator"

    def __init__(self, spec: str, *, name: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.spec, self.options = spec, dict(options or {})
        self.factory = import_factory(spec)
        self.name = name or spec.rsplit(":", 1)[-1]
        self._calc: Calculator | None = None
        self.failures: Counter = Counter()

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.spec,
            "weights_sha256": None,
            "config": self.options or None,
            "forces": "calculator",
            "training_curve": None,
        }

    def calculator(self, level_of_theory: str | None = None) -> Calculator:
        if self._calc is None:
            self._calc = self.factory(**self.options)
        return self._calc

    def predict(self, structures: Iterable[Structure]) -> Iterator[tuple[Structure, Prediction | None]]:
        """Predictions in input order; a structure the calculator fails on (an element it does not cover,
        a crash inside it) gives None and is counted in ``failures`` by the error's type and message."""
        calc = self.calculator()
        for s in structures:
            atoms = structure_to_atoms(s)
            atoms.calc = calc
            try:
                energy, forces = float(atoms.get_potential_energy()), np.asarray(atoms.get_forces())
                stress = None
                if s.is_periodic and "stress" in calc.implemented_properties:
                    stress = atoms.get_stress(voigt=False)
            except Exception as err:  # a foreign calculator may raise anything on input it does not cover
                self.failures[f"{type(err).__name__}: {err}"[:200]] += 1
                calc.reset()  # a calculator that failed mid-way may keep a broken state
                yield s, None
                continue
            yield s, Prediction(energy, forces, stress)


class ReferenceBaseline:
    """The trivial model: per-element linear reference energies per level of theory (least squares on the
    training split), zero forces and zero stress.

    held_out: structures to choose a ridge on per level (``model.reference_energies.choose_ridge``, as
    training's ``model.reference_ridge: auto`` does); without them the fit is plain least squares.
    """

    kind = "baseline"

    def __init__(
        self,
        training: Iterable[Structure],
        *,
        fitted_on: str,
        name: str = "reference+zero-force",
        held_out: Iterable[Structure] | None = None,
    ) -> None:
        labels = energy_labels(training)
        if not labels[1]:
            raise BadInputError("no energy labels to fit the reference-energy baseline on", path=fitted_on)
        held = energy_labels(held_out) if held_out is not None else None
        self.levels = extend_levels(LEVELS_OF_THEORY, set(labels[2]) | set(held[2] if held else ()))
        table, self.ridge = fit_with_ridge(labels, self.levels, "auto" if held else 0.0, held)
        self.table = table.numpy()
        self.fitted_on, self.structures, self.name = fitted_on, len(labels[1]), name

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": None,
            "weights_sha256": None,
            "config": {
                "fitted_on": self.fitted_on,
                "structures": self.structures,
                "ridge": {self.levels[i]: float(lam) for i, lam in enumerate(self.ridge) if lam > 0},
            },
            "forces": "zero",
            "training_curve": None,
        }

    def energy(self, s: Structure) -> float:
        return float(
            self.table[level_index(s.level_of_theory, self.levels), np.asarray(s.atomic_numbers)].sum()
        )

    def predict(self, structures: Iterable[Structure]) -> Iterator[tuple[Structure, Prediction]]:
        for s in structures:
            stress = np.zeros((3, 3)) if s.is_periodic else None
            yield s, Prediction(self.energy(s), np.zeros((s.num_atoms, 3)), stress)

    def calculator(self, level_of_theory: str | None = None) -> Calculator:
        return _TableCalculator(self.table[level_index(level_of_theory or "none", self.levels)])


class _TableCalculator(Calculator):
    """Σ reference energies of the atoms; zero forces and stress."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, row: np.ndarray) -> None:
        super().__init__()
        self.row = row

    def calculate(
        self, atoms: Atoms | None = None, properties: Any = None, system_changes: Any = all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        energy = float(self.row[self.atoms.numbers].sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.zeros((len(self.atoms), 3)),
            "stress": np.zeros(6),
        }


def import_factory(spec: str) -> Callable[..., Calculator]:
    """``package.module:callable`` → the callable; errors say what was wrong with the spec."""
    if ":" not in spec:
        raise BadInputError(
            f"expected module:factory (e.g. ase.calculators.emt:EMT), got {spec!r}", field="calculator"
        )
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BadInputError(f"cannot import {module_name!r} ({err})", field="calculator") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BadInputError(f"{module_name} has no callable {attr!r}", field="calculator")
    return factory


def training_curve(checkpoint: Path) -> list[dict[str, Any]] | None:
    """The run's ``metrics.jsonl`` records (step, losses, validation metrics): the copy an export keeps, or
    the run folder's when the checkpoint is in one (``<run>/checkpoints/step_*``) or beside one."""
    for run in (checkpoint, checkpoint.parent.parent, checkpoint.parent):
        path = run / "metrics.jsonl"
        if path.is_file():
            records = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                records.append(
                    {
                        k: v
                        for k, v in record.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    }
                )
            return records
    return None


def training_summary(checkpoint: Path) -> dict[str, Any] | None:
    """How the weights were trained, from the run config and trainer state a checkpoint (or its export) keeps:
    what they started from (``init_from``: None means from scratch), the steps, data and tasks. Reports pair
    models by it (pretrained versus from scratch at an equal budget)."""
    files = CheckpointFolder(checkpoint)
    if not files.run_config.is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load(files.run_config.read_text()) or {}
        state = json.loads(files.trainer_state.read_text()) if files.trainer_state.is_file() else {}
    except (yaml.YAMLError, ValueError, UnicodeDecodeError):
        return None
    run, data, model = (config.get(k) or {} for k in ("run", "data", "model"))
    return {
        "init_from": model.get("init_from"),
        "max_steps": run.get("max_steps"),
        "step": state.get("step"),
        "structures_seen": state.get("structures_seen"),
        "atoms_seen": state.get("atoms_seen"),
        "world_size": state.get("world_size"),
        "seed": run.get("seed"),
        "corpus": data.get("corpus"),
        "split": data.get("split"),
        "domain_weights": data.get("domain_weights"),
        "max_atoms": data.get("max_atoms"),
        "train_structures": _split_size(
            data.get("corpus"), data.get("split") or "train", data.get("domain_weights")
        ),
        "conservative_forces": model.get("conservative_forces"),
        "tasks": sorted(config.get("tasks") or {}),
        "lr": (config.get("optim") or {}).get("lr"),
    }


def _split_size(corpus: Any, split: str, weights: dict[str, float] | None) -> int | None:
    """Structures of ``split`` in the training corpora, in the domains the run drew from (by their manifests,
    relative to the working directory as the run was); None when a manifest cannot be read."""
    from data_pipeline.manifest import read_manifest

    total = 0
    for folder in [corpus] if isinstance(corpus, str) else corpus or []:
        try:
            shards = read_manifest(folder).select(split=split)
        except (BadInputError, TypeError):
            return None
        total += sum(s.num_samples for s in shards if weights is None or (weights.get(s.domain) or 0) > 0)
    return total or None


def _default_name(folder: Path) -> str:
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}@{parts[-1]}"
    if folder.name == "export" and len(parts) >= 2:
        return parts[-2]
    return folder.name


def _folder_sha256(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)} {sha256_of(p)}\n".encode())
    return h.hexdigest()


__all__ = ["CalculatorPredictor", "CheckpointPredictor", "ReferenceBaseline", "structure_to_atoms"]
