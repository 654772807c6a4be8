"""Backbone throughput: Wigner-D cost per degree, and atoms/s of forward, forces and a force-trained step.

    OMP_NUM_THREADS=1 python benchmarks/backbone_throughput.py --sizes tiny --out backbone_throughput.json
    python benchmarks/backbone_throughput.py --sizes tiny,small,base --device cuda --supercell 4

The structure is rattled diamond silicon (an n x n x n supercell of the 8-atom cubic cell), with the
periodic neighbour list from vesin at each size's cutoff. Prints a table and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
import vesin
from ase.build import bulk
from timing import seconds_per_call

from data_pipeline.atomic_files import write_text_atomic
from model.backbone import EquivariantTransformer
from model.sizes import backbone_config, count_backbone_parameters
from model.so3 import edge_rotation, wigner_d


def silicon_graph(supercell: int, cutoff: float, device: torch.device) -> dict[str, torch.Tensor]:
    atoms = bulk("Si", "diamond", cubic=True).repeat(supercell)
    atoms.rattle(0.05, seed=0)
    i, j, shifts = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        atoms.positions, np.asarray(atoms.cell), True, quantities="ijS"
    )
    return {
        "z": torch.tensor(atoms.numbers, device=device),
        "pos": torch.tensor(atoms.positions, dtype=torch.float32, device=device),
        "cell": torch.tensor(np.asarray(atoms.cell), dtype=torch.float32, device=device),
        "edge_index": torch.tensor(np.stack([j, i]), dtype=torch.long, device=device),
        "shifts": torch.tensor(shifts, dtype=torch.float32, device=device),
    }


def wigner_rows(device: torch.device, num_edges: int, repeat: int) -> list[dict]:
    vectors = torch.randn(num_edges, 3, device=device)
    rows = []
    for lmax in range(1, 7):
        seconds = seconds_per_call(lambda lmax=lmax: wigner_d(edge_rotation(vectors), lmax), device, repeat)
        rows.append({"lmax": lmax, "edges": num_edges, "ns_per_edge": 1e9 * seconds / num_edges})
    return rows


def size_row(name: str, supercell: int, device: torch.device, repeat: int, autocast: bool) -> dict:
    cfg = backbone_config(name)
    torch.manual_seed(0)
    model = EquivariantTransformer(cfg).to(device)
    graph = silicon_graph(supercell, cfg.cutoff, device)
    num_atoms = len(graph["z"])
    one = torch.zeros(1, dtype=torch.long, device=device)
    conditioning = dict(
        batch=torch.zeros(num_atoms, dtype=torch.long, device=device),
        charge=one,
        spin=one + 1,
        level_of_theory=one,
        domain=one + 2,
    )
    readout = torch.randn(cfg.channels, device=device)

    def energy(positions: torch.Tensor) -> torch.Tensor:
        edge_vec = (
            positions[graph["edge_index"][0]]
            - positions[graph["edge_index"][1]]
            + graph["shifts"] @ graph["cell"]
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            x = model(graph["z"], graph["edge_index"], edge_vec, **conditioning)
        return (x[:, 0].float() @ readout).sum()

    def forward() -> None:
        with torch.no_grad():
            energy(graph["pos"])

    def forces() -> None:
        positions = graph["pos"].clone().requires_grad_(True)
        torch.autograd.grad(energy(positions), positions)

    def force_training_step() -> None:
        positions = graph["pos"].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(positions), positions, create_graph=True)
        grad.pow(2).sum().backward()

    row = {
        "size": name,
        "parameters": count_backbone_parameters(cfg),
        "atoms": num_atoms,
        "edges": int(graph["edge_index"].shape[1]),
        "bf16_autocast": autocast,
    }
    for label, fn in (("forward", forward), ("forces", forces), ("force_step", force_training_step)):
        row[f"{label}_atoms_per_s"] = num_atoms / seconds_per_call(fn, device, repeat)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        force_training_step()
        row["force_step_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny", help="comma-separated names from model.sizes.SIZES")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--supercell", type=int, default=3, help="n for the n x n x n silicon supercell")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast")
    parser.add_argument("--out", default="backbone_throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)

    wigner = wigner_rows(device, num_edges=20_000, repeat=args.repeat)
    print(f"{'lmax':>4} {'Wigner-D ns/edge':>17}")
    for r in wigner:
        print(f"{r['lmax']:>4} {r['ns_per_edge']:>17.1f}")

    sizes = [size_row(name, args.supercell, device, args.repeat, args.bf16) for name in args.sizes.split(",")]
    print(
        f"\n{'size':>6} {'params':>10} {'atoms':>6} {'edges':>7} {'fwd atoms/s':>12} {'forces atoms/s':>15} "
        f"{'force-step atoms/s':>19}"
    )
    for r in sizes:
        print(
            f"{r['size']:>6} {r['parameters']:>10,} {r['atoms']:>6} {r['edges']:>7} {r['forward_atoms_per_s']:>12.0f} "
            f"{r['forces_atoms_per_s']:>15.0f} {r['force_step_atoms_per_s']:>19.0f}"
        )

    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "wigner_d": wigner,
        "sizes": sizes,
    }
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
