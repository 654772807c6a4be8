"""Relax many structures at once: FIRE on every structure of a list, one model call per step for all the
structures still moving.

    result = relax_batch(atoms_list, predictor, fmax=0.05, steps=200)
    result.atoms[i], result.energies[i], result.converged[i], result.steps[i]

Each structure follows exactly the algorithm of ASE's ``FIRE`` (``ase.optimize.FIRE`` with its defaults:
dt 0.1, maxstep 0.2 Å, dtmax 1.0, Nmin 5, finc 1.1, fdec 0.5, astart 0.1, fa 0.99; its velocity, time step
and mixing state per structure; its convergence test max_i |F_i| < fmax checked before every step), so a
structure relaxed here and the same structure relaxed by ``FIRE(atoms).run(fmax, steps)`` with the
:class:`~model.calculator.AtomFMCalculator` take the same steps, to the round-off of batched against single
model calls. A structure leaves the batch when it converges or has taken ``steps`` steps; the others go on.
Positions only: the cell stays fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from model.batched import BatchedPredictor


@dataclass
class FIREState:
    """ASE FIRE's state for one structure."""

    dt: float = 0.1
    a: float = 0.1
    n_positive: int = 0  # ASE's Nsteps: steps since the last uphill reset
    velocity: np.ndarray | None = None


@dataclass
class FIRESettings:
    """ASE FIRE's parameters (same names, same defaults)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1


@dataclass
class BatchedRelaxation:
    """Per structure: the relaxed copy, its energy (eV) and forces (eV/Å), whether max |F| fell below fmax,
    and the number of FIRE steps taken."""

    atoms: list[Atoms]
    energies: np.ndarray
    forces: list[np.ndarray]
    converged: np.ndarray
    steps: np.ndarray
    model_calls: int = 0
    history: list[int] = field(default_factory=list)  # structures in each model call


def fire_step(
    positions: np.ndarray, forces: np.ndarray, state: FIREState, settings: FIRESettings
) -> np.ndarray:
    """One step of ASE's FIRE for one structure (positions [n, 3] Å, forces [n, 3] eV/Å); new positions."""
    gradient = forces.reshape(-1)
    if state.velocity is None:
        state.velocity = np.zeros_like(gradient)
    else:
        vf = np.vdot(gradient, state.velocity)
        grad2 = np.vdot(gradient, gradient)
        if vf > 0.0:
            state.velocity = (1.0 - state.a) * state.velocity + state.a * gradient / np.sqrt(grad2) * np.sqrt(
                np.vdot(state.velocity, state.velocity)
            )
            if state.n_positive > settings.Nmin:
                state.dt = min(state.dt * settings.finc, settings.dtmax)
                state.a *= settings.fa
            state.n_positive += 1
        else:
            state.velocity[:] *= 0.0
            state.a = settings.astart
            state.dt *= settings.fdec
            state.n_positive = 0
    state.velocity += state.dt * gradient
    dr = state.dt * state.velocity
    norm = np.sqrt(np.vdot(dr, dr))
    if norm > settings.maxstep:
        dr = settings.maxstep * dr / norm
    return positions + dr.reshape(-1, 3)


def max_force(forces: np.ndarray) -> float:
    """ASE's convergence measure: the largest per-atom force norm (eV/Å)."""
    return float(np.sqrt((forces**2).sum(axis=1).max())) if len(forces) else 0.0


def relax_batch(
    atoms_list: list[Atoms],
    predictor: BatchedPredictor,
    fmax: float = 0.05,
    steps: int = 200,
    settings: FIRESettings | None = None,
) -> BatchedRelaxation:
    """FIRE-relax copies of ``atoms_list`` (the originals are left as they are) until each one's max |F| <
    ``fmax`` eV/Å or it has taken ``steps`` steps."""
    settings = settings or FIRESettings()
    relaxed = [atoms.copy() for atoms in atoms_list]
    states = [FIREState(dt=settings.dt, a=settings.a) for _ in relaxed]
    taken = np.zeros(len(relaxed), dtype=int)
    converged = np.zeros(len(relaxed), dtype=bool)
    energies = np.zeros(len(relaxed))
    forces: list[np.ndarray] = [np.zeros((len(a), 3)) for a in relaxed]
    active = list(range(len(relaxed)))
    calls: list[int] = []
    while active:
        prediction = predictor.predict([relaxed[i] for i in active])
        calls.append(len(active))
        still = []
        for row, i in enumerate(active):
            energies[i], forces[i] = prediction.energies[row], prediction.forces[row]
            if max_force(forces[i]) < fmax:
                converged[i] = True
            elif taken[i] < steps:
                relaxed[i].positions = fire_step(relaxed[i].positions, forces[i], states[i], settings)
                taken[i] += 1
                still.append(i)
        active = still
    return BatchedRelaxation(relaxed, energies, forces, converged, taken, len(calls), calls)
