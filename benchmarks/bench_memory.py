"""Training memory and speed of the `tiny` model, and a check that a change to the model keeps its outputs.

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --save-reference /tmp/ref.pt   # before a change
    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --compare /tmp/ref.pt          # after it
    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --memory --speed --json out.json

``--save-reference`` / ``--compare``: on a fixed float64 batch (caffeine, benzoic acid and a rattled 8-atom
silicon cell, weights of seed 0) the energies, direct forces, conservative forces, stress and the parameter
gradients of a direct-force and of a conservative-force loss; ``--compare`` prints the largest absolute
difference of each against the saved file, with and without activation checkpointing, and fails above
float64 round-off (1e-9 of each quantity's largest value).

``--memory``: per 1,000 atoms of a 64-atom silicon cell, one training step (direct and conservative
forces, activation checkpointing off and on): what the forward pass leaves autograd to keep for the
backward (``model.activation_memory``), the most autograd holds at once over the whole step (layers that
checkpointing recomputes included), and the process's peak resident memory growth over the step after a
warm-up step on 8 atoms (which also counts gradients, temporaries and the allocator's slack), each case in
a fresh child process. ``--protein``: also cobrotoxin (937 atoms, MDAnalysisTests) and the first 1,000+ atoms
of adenylate kinase, trained on conservative forces with checkpointing (``--protein-all``: without it too,
~14 GB for cobrotoxin before this issue's changes).

``--speed``: atoms/s of a training step (energy + direct or conservative forces, backward) on drug-like
ligands and on a 64-atom silicon crystal, repeated and reported as medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ase.io
import torch
from ase import Atoms
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402
from model.activation_memory import account_saved_tensors, measure_saved_activations  # noqa: E402
from model.atomfm import AtomFM, model_config  # noqa: E402
from model.calculator import atoms_to_batch  # noqa: E402

GIB = 1024**3
REFERENCE_LIGANDS = ("CAF", "BEN")
SPEED_LIGANDS = ("ATP", "NAD", "SAM", "CAF")


def ligands(codes: tuple[str, ...]) -> list[Atoms]:
    """Ligands of the PDB Chemical Component Dictionary with hydrogens (biotite)."""
    import biotite.structure.info as ccd

    out = []
    for code in codes:
        residue = ccd.residue(code)
        out.append(
            Atoms(symbols=[e.capitalize() for e in residue.element], positions=residue.coord.astype(float))
        )
    return out


def silicon(repeat: int, seed: int = 0) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def cobrotoxin() -> Atoms:
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    atoms = ase.io.read(data / "cobrotoxin_dry_neutral_0.pdb", index=0)  # the file ends with an empty model
    atoms.pbc = False  # a dry protein, isolated: the file's CRYST1 box would make it a periodic Ewald sum
    atoms.info["domain"] = "protein"
    return atoms


def adenylate_kinase_segment(min_atoms: int = 1000) -> Atoms:
    """The first residues of adenylate kinase (adk_closed.pdb of MDAnalysisTests, with hydrogens; 214 residues,
    3,341 atoms) up to the first residue boundary at or beyond ``min_atoms``: a 1,000-atom protein chain."""
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    atoms = ase.io.read(data / "adk_closed.pdb", index=0)
    residues = atoms.arrays["residuenumbers"]
    last = next(r for r in sorted(set(residues)) if (residues <= r).sum() >= min_atoms)
    segment = atoms[residues <= last]
    segment.pbc = False
    segment.info["domain"] = "protein"
    return segment


PROTEINS = {"cobrotoxin": cobrotoxin, "adk-1000": adenylate_kinase_segment}


def tiny_model(dtype: torch.dtype = torch.float32, **overrides: Any) -> AtomFM:
    torch.manual_seed(0)
    return AtomFM(model_config("tiny", **overrides)).to(dtype).train()


def training_loss(model: AtomFM, batch: Any, conservative: bool) -> torch.Tensor:
    """Energy + forces (direct head or −∂E/∂x with the graph kept) squared and summed: a training loss."""
    forces = "forces" if conservative else "forces_direct"
    out = model(batch, ("energy", forces), conservative=conservative)
    return out["energy"].square().sum() + out[forces].square().sum()


def reference_outputs(checkpointing: bool) -> dict[str, torch.Tensor]:
    """Outputs and parameter gradients of the fixed float64 batch (see the module docstring)."""
    model = tiny_model(torch.float64, activation_checkpointing=checkpointing)
    structures = ligands(REFERENCE_LIGANDS) + [silicon(1, seed=2)]
    batch = atoms_to_batch(structures, model.config.backbone.cutoff, "gfn2-xtb", dtype=torch.float64)
    out: dict[str, torch.Tensor] = {}
    names = [name for name, _ in model.named_parameters()]
    for conservative in (False, True):
        kind = "conservative" if conservative else "direct"
        model.zero_grad(set_to_none=True)
        forces = "forces" if conservative else "forces_direct"
        wanted = ("energy", forces, "stress") if conservative else ("energy", forces)
        result = model(batch, wanted, conservative=conservative)
        loss = result["energy"].square().sum() + result[forces].square().sum()
        if conservative:
            loss = loss + result["stress"].square().sum()
        loss.backward()
        for name in wanted:
            out[f"{kind}/{name}"] = result[name].detach()
        for name, p in zip(names, model.parameters(), strict=True):
            if p.grad is not None:
                out[f"{kind}/grad/{name}"] = p.grad.detach().clone()
    return out


def compare(path: Path) -> bool:
    reference = torch.load(path)
    ok = True
    for checkpointing in (False, True):
        now = reference_outputs(checkpointing)
        worst: dict[str, float] = {}
        for key, value in reference.items():
            if key not in now:
                print(f"missing {key}")
                ok = False
                continue
            diff = float((now[key] - value).abs().max())
            scale = float(value.abs().max()) or 1.0
            group = key.rsplit("/", 1)[0] if "/grad/" in key else key
            worst[group] = max(worst.get(group, 0.0), diff)
            if diff > 1e-9 * scale:
                print(f"  {key}: max abs diff {diff:.3e} (scale {scale:.3e})")
                ok = False
        print(f"checkpointing {'on' if checkpointing else 'off'}:")
        for group, diff in worst.items():
            print(f"  {group:<28} max abs diff {diff:.2e}")
    print("outputs unchanged" if ok else "OUTPUTS CHANGED")
    return ok


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_row(structure: str, conservative: bool, checkpointing: bool) -> dict[str, Any]:
    """One training step's saved and peak memory (run in a child process, so ru_maxrss is this step's)."""
    model = tiny_model(activation_checkpointing=checkpointing)
    atoms = [PROTEINS[structure]()] if structure in PROTEINS else [silicon(2)]
    batch = atoms_to_batch(atoms, model.config.backbone.cutoff, "gfn2-xtb")
    num_atoms, num_edges = int(batch.pos.shape[0]), int(batch.edge_index.shape[1])
    small = atoms_to_batch([silicon(1)], model.config.backbone.cutoff, "gfn2-xtb")
    training_loss(model, small, conservative).backward()  # loads what a first step loads, at a low peak
    model.zero_grad(set_to_none=True)
    before = _rss_bytes()
    start = time.perf_counter()
    training_loss(model, batch, conservative).backward()
    seconds = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model.zero_grad(set_to_none=True)
    saved = measure_saved_activations(model, lambda: training_loss(model, batch, conservative))
    step = account_saved_tensors(model, lambda: training_loss(model, batch, conservative).backward())
    return {
        "structure": structure,
        "atoms": num_atoms,
        "edges_per_atom": num_edges / num_atoms,
        "forces": "conservative" if conservative else "direct",
        "checkpointing": checkpointing,
        "saved_bytes": saved,
        "peak_held_bytes": step.peak_bytes,
        "rss_growth_bytes": max(rss_peak - before, 0),
        "step_s": seconds,
    }


def memory_rows(protein: str | None) -> list[dict[str, Any]]:
    cases = [("silicon", cons, ckpt) for cons in (False, True) for ckpt in (False, True)]
    if protein:
        cases += [(name, True, True) for name in PROTEINS]
        cases += [(name, True, False) for name in PROTEINS] if protein == "all" else []
    rows = []
    for structure, conservative, checkpointing in cases:
        args = [
            sys.executable,
            __file__,
            "--memory-row",
            structure,
            str(int(conservative)),
            str(int(checkpointing)),
        ]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode:
            rows.append({"structure": structure, "conservative": conservative, "error": done.stderr[-2000:]})
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        scale = 1000 / row["atoms"] / GIB
        print(
            f"{row['structure']:<11}{row['atoms']:>5} atoms {row['edges_per_atom']:>4.0f} e/a "
            f"{row['forces']:<13}ckpt {'on ' if checkpointing else 'off'}  per 1,000 atoms: "
            f"saved {row['saved_bytes'] * scale:5.2f} GiB, peak held {row['peak_held_bytes'] * scale:5.2f} GiB, "
            f"RSS growth {row['rss_growth_bytes'] * scale:5.2f} GiB; "
            f"whole structure: peak held {row['peak_held_bytes'] / GIB:5.2f} GiB, RSS growth "
            f"{row['rss_growth_bytes'] / GIB:5.2f} GiB, step {row['step_s']:.1f} s"
        )
    return rows


def speed_rows(repeat: int) -> list[dict[str, Any]]:
    """Median atoms/s of training steps; the systems' steps alternate so drifting load hits each alike."""
    model = tiny_model()
    cutoff = model.config.backbone.cutoff
    systems = {
        "ligands": atoms_to_batch(ligands(SPEED_LIGANDS), cutoff, "gfn2-xtb"),
        "silicon": atoms_to_batch([silicon(2)], cutoff, "gfn2-xtb"),
    }
    times: dict[tuple[str, bool], list[float]] = {(s, c): [] for s in systems for c in (False, True)}
    for index in range(repeat + 1):
        for (name, conservative), samples in times.items():
            batch = systems[name]
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            training_loss(model, batch, conservative).backward()
            if index:  # the first round warms up
                samples.append(time.perf_counter() - start)
    rows = []
    for (name, conservative), samples in times.items():
        atoms = int(systems[name].pos.shape[0])
        rate = atoms / statistics.median(samples)
        rows.append({"structure": name, "atoms": atoms, "conservative": conservative, "atoms_per_s": rate})
        print(
            f"{name:<9}{atoms:>5} atoms  train {'conservative' if conservative else 'direct':<13}{rate:8.1f} atoms/s"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-reference", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument(
        "--protein", action="store_const", const="checkpointed", help="with --memory: cobrotoxin too"
    )
    parser.add_argument(
        "--protein-all", dest="protein", action="store_const", const="all", help=argparse.SUPPRESS
    )
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-row", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_row:
        structure, conservative, checkpointing = args.memory_row
        print(json.dumps(memory_row(structure, conservative == "1", checkpointing == "1")))
        return 0
    report: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.save_reference:
        reference = reference_outputs(checkpointing=False)
        torch.save(reference, args.save_reference)
        print(f"saved {len(reference)} tensors to {args.save_reference}")
    if args.compare and not compare(args.compare):
        return 1
    if args.memory:
        report["memory"] = memory_rows(args.protein)
    if args.speed:
        report["speed"] = speed_rows(args.repeat)
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
