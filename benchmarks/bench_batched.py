"""Batched against one-at-a-time inference: single points and FIRE relaxations of many crystals through
``model.batched`` (all structures per model call) and through the ASE calculator (one call per structure),
the same model, the same structures, the same FIRE; wall time, speed-up and agreement.

    OMP_NUM_THREADS=1 python benchmarks/bench_batched.py --quick            # 50 crystals, 30 FIRE steps
    python benchmarks/bench_batched.py --count 200 --steps 100 --checkpoint runs/exp_s2v1/export --device cuda

Structures: the shipped real crystals (``data_pipeline.sources.crystal_collections``: AFLOW prototypes,
pymatgen's common structures, ASE's elemental solids) with at most ``--max-atoms`` atoms, rattled by 0.05 Å.
Model: ``--checkpoint`` (an export or training checkpoint folder), else an untrained ``tiny`` (seed 0);
float64 (the calculator's default) unless ``--dtype float32``. Both sides alternate (``--repeat`` rounds, medians), so that the load of a shared machine
falls on both. Agreement: the largest energy difference relative to the energy, the largest force difference
(single points), and for the relaxations the largest final energy and position differences and whether
every structure took the same number of steps and converged alike. With TorchSim installed
(``atomfm[torchsim]``), also TorchSim's ``static`` and ``optimize`` (its ASE-flavoured FIRE, force convergence at
``--fmax``) through ``model.torchsim``, the same model and structures; ``--no-torchsim`` leaves them out.
Prints a table, writes JSON atomically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.optimize import FIRE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402
from data_pipeline.sources.crystal_collections import shipped_crystals  # noqa: E402
from model.batched import BatchedPredictor  # noqa: E402
from model.batched_relax import relax_batch  # noqa: E402
from model.calculator import AtomFMCalculator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def crystals(count: int, max_atoms: int) -> list[Atoms]:
    """The first ``count`` shipped crystals with 2..``max_atoms`` atoms, rattled by 0.05 Å (seeded)."""
    out = []
    for index, crystal in enumerate(c for c in shipped_crystals(max_atoms=max_atoms) if len(c.atoms) > 1):
        atoms = crystal.atoms.copy()
        atoms.rattle(0.05, seed=index)
        atoms.info["key"] = f"{crystal.collection}/{crystal.name}"
        out.append(atoms)
        if len(out) == count:
            break
    return out


def calculator(args: argparse.Namespace) -> AtomFMCalculator:
    dtype = getattr(torch, args.dtype)
    if args.checkpoint:
        return AtomFMCalculator.from_checkpoint(args.checkpoint, dtype=dtype, device=args.device)
    return AtomFMCalculator.from_config("tiny", dtype=dtype, device=args.device)


def single_points_one_at_a_time(calc: AtomFMCalculator, structures: list[Atoms]) -> tuple[np.ndarray, list]:
    energies, forces = [], []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(energies), forces


def relax_one_at_a_time(calc: AtomFMCalculator, structures: list[Atoms], fmax: float, steps: int) -> dict:
    energies, positions, taken, converged = [], [], [], []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        optimizer = FIRE(atoms, logfile=None)
        converged.append(optimizer.run(fmax=fmax, steps=steps))
        energies.append(atoms.get_potential_energy())
        positions.append(atoms.positions.copy())
        taken.append(optimizer.nsteps)
    return {"energies": np.array(energies), "positions": positions, "steps": taken, "converged": converged}


def torchsim_runs(calc: AtomFMCalculator, structures: list[Atoms], fmax: float, steps: int, max_atoms: int):
    """TorchSim's single points and FIRE relaxation of ``structures`` through :mod:`model.torchsim`."""
    import torch_sim as ts

    from model.torchsim import AtomFMTorchSimModel, relax

    model = AtomFMTorchSimModel.from_calculator(calc, max_atoms)

    def single_points():
        results = ts.static(structures, model)
        return np.array([float(r["potential_energy"]) for r in results]), [
            r["forces"].numpy() for r in results
        ]

    def relaxation():
        state = ts.io.atoms_to_state(structures, model.device, model.dtype)
        relaxed = relax(model, state, fmax, steps)
        out = model(relaxed)
        return out["energy"].numpy(), out["forces"].norm(dim=1), relaxed.system_idx

    return single_points, relaxation


def timed(fn: Any) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="50 crystals, 30 FIRE steps, one relaxation round"
    )
    parser.add_argument("--count", type=int, default=None, help="crystals (default 200; --quick 50)")
    parser.add_argument("--max-atoms", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=None, help="FIRE steps at most (default 100; --quick 30)"
    )
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--repeat", type=int, default=None, help="rounds of each side (default 3; --quick 1)")
    parser.add_argument("--max-atoms-per-call", type=int, default=2048)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-torchsim", action="store_true", help="leave out TorchSim's runners")
    parser.add_argument("--out", default="results/bench_batched.json")
    args = parser.parse_args()
    count = args.count or (50 if args.quick else 200)
    steps = args.steps or (30 if args.quick else 100)
    repeat = args.repeat or (1 if args.quick else 3)
    warnings.simplefilter("ignore")  # an untrained element or contact warns once per calculator: not timed

    structures = crystals(count, args.max_atoms)
    calc = calculator(args)
    predictor = BatchedPredictor(calc, max_atoms=args.max_atoms_per_call)
    predictor.predict(structures[:2])  # warm-up of both paths
    single_points_one_at_a_time(calc, structures[:2])

    torchsim = None
    if not args.no_torchsim:
        try:
            torchsim = torchsim_runs(calc, structures, args.fmax, steps, args.max_atoms_per_call)
        except ImportError:
            print("TorchSim is not installed (pip install -e '.[torchsim]'): its rows are left out")
    times: dict[str, list[float]] = {
        "sp_single": [],
        "sp_batched": [],
        "relax_single": [],
        "relax_batched": [],
    }
    if torchsim:
        times.update({"sp_torchsim": [], "relax_torchsim": []})
    for _ in range(max(repeat, 3)):  # single points are cheap: at least three rounds
        seconds, (single_e, single_f) = timed(lambda: single_points_one_at_a_time(calc, structures))
        times["sp_single"].append(seconds)
        seconds, batched = timed(lambda: predictor.predict(structures))
        times["sp_batched"].append(seconds)
        if torchsim:
            seconds, (ts_e, ts_f) = timed(torchsim[0])
            times["sp_torchsim"].append(seconds)
    for _ in range(repeat):
        seconds, single = timed(lambda: relax_one_at_a_time(calc, structures, args.fmax, steps))
        times["relax_single"].append(seconds)
        seconds, relaxed = timed(lambda: relax_batch(structures, predictor, args.fmax, steps))
        times["relax_batched"].append(seconds)
        if torchsim:
            seconds, (ts_relaxed_e, ts_fnorm, ts_system) = timed(torchsim[1])
            times["relax_torchsim"].append(seconds)

    median = {k: statistics.median(v) for k, v in times.items()}
    agreement = {
        "single_point_energy_max_rel": float(np.max(np.abs(batched.energies - single_e) / np.abs(single_e))),
        "single_point_force_max_abs": float(
            max(np.abs(b - s).max() for b, s in zip(batched.forces, single_f, strict=True))
        ),
        "relaxed_energy_max_abs_eV": float(np.max(np.abs(relaxed.energies - single["energies"]))),
        "relaxed_position_max_abs_A": float(
            max(
                np.abs(r.positions - p).max() for r, p in zip(relaxed.atoms, single["positions"], strict=True)
            )
        ),
        "same_steps": int(np.sum(relaxed.steps == np.array(single["steps"]))),
        "same_convergence": int(np.sum(relaxed.converged == np.array(single["converged"]))),
    }
    if torchsim:
        ts_converged = np.array(
            [bool(ts_fnorm[ts_system == i].max() < args.fmax) for i in range(len(structures))]
        )
        both = ts_converged & np.array(single["converged"])
        agreement["torchsim"] = {
            "single_point_energy_max_rel": float(np.max(np.abs(ts_e - single_e) / np.abs(single_e))),
            "single_point_force_max_abs": float(
                max(np.abs(t - s).max() for t, s in zip(ts_f, single_f, strict=True))
            ),
            "relaxed_energy_max_abs_eV": float(np.max(np.abs(ts_relaxed_e - single["energies"]))),
            "relaxed_energy_median_abs_eV": float(np.median(np.abs(ts_relaxed_e - single["energies"]))),
            "converged": int(ts_converged.sum()),
            "both_converged": int(both.sum()),
            "relaxed_energy_max_abs_eV_both_converged": float(
                np.max(np.abs(ts_relaxed_e - single["energies"])[both]) if both.any() else float("nan")
            ),
        }
    result = {
        "git_commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "model": calc.model.config.backbone.to_dict(),
        "parameters": sum(p.numel() for p in calc.model.parameters()),
        "checkpoint": args.checkpoint or "untrained tiny (seed 0)",
        "structures": len(structures),
        "atoms": sum(len(a) for a in structures),
        "fmax": args.fmax,
        "steps": steps,
        "converged": int(relaxed.converged.sum()),
        "fire_steps_total": int(relaxed.steps.sum()),
        "batched_model_calls": relaxed.model_calls,
        "seconds": times,
        "median_seconds": median,
        "speedup": {
            "single_points": median["sp_single"] / median["sp_batched"],
            "relaxation": median["relax_single"] / median["relax_batched"],
            **(
                {
                    "torchsim_single_points": median["sp_single"] / median["sp_torchsim"],
                    "torchsim_relaxation": median["relax_single"] / median["relax_torchsim"],
                }
                if torchsim
                else {}
            ),
        },
        "agreement": agreement,
    }
    out = write_text_atomic(args.out, json.dumps(result, indent=1))
    print(
        f"{len(structures)} crystals, {result['atoms']} atoms, {args.dtype}, {args.device}, {result['parameters']:,} parameters"
    )
    header = f"{'task':<34}{'one at a time (s)':>19}{'batched (s)':>13}{'speed-up':>10}"
    print(header + (f"{'TorchSim (s)':>14}{'speed-up':>10}" if torchsim else ""))
    for name, key in (("single points", "sp"), (f"FIRE, fmax {args.fmax}, ≤{steps} steps", "relax")):
        s, b = median[f"{key}_single"], median[f"{key}_batched"]
        line = f"{name:<34}{s:>19.2f}{b:>13.2f}{s / b:>9.1f}×"
        if torchsim:
            t = median[f"{key}_torchsim"]
            line += f"{t:>14.2f}{s / t:>9.1f}×"
        print(line)
    print(
        f"relaxations: {result['converged']}/{len(structures)} converged, {result['fire_steps_total']} FIRE steps in "
        f"{relaxed.model_calls} batched model calls; agreement: {json.dumps(agreement)}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
