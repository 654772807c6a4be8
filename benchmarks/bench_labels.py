"""Labelling throughput: structures/s and atoms/s of each labeller, in one process and through
``label_structures`` with several worker processes (start-up included). Prints a table and writes JSON.

    python benchmarks/bench_labels.py [--workers 2] [--out results/bench_labels.json]

Structures come from the demo sources: NCI SMILES conformers (GFN2-xTB), EMT alloy cells (EMT), amber14
MD frames of the two smallest shipped protein chains (amber14), shipped crystals (CHGNet).
"""

from __future__ import annotations

from data_pipeline.atomic_files import write_text_atomic
from data_pipeline.labels.process_pool import limit_threads

limit_threads()  # one thread per process, as the labelling workers run, before any numerical import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

from data_pipeline.labels import label_structures  # noqa: E402
from data_pipeline.labels.registry import labeller_class  # noqa: E402
from data_pipeline.schema import Structure  # noqa: E402
from data_pipeline.sources import (  # noqa: E402
    crystals,
    emt_alloys,
    protein_frames,
    read_smiles,
    shipped_protein_chains,
    smiles_conformers,
)


def workloads(counts: dict[str, int]) -> dict[str, list[Structure]]:
    chains = sorted(shipped_protein_chains(), key=lambda c: c.residues)[:2]
    return {
        "xtb": list(smiles_conformers(read_smiles()[: counts["xtb"] // 2], conformers=2, workers=0)),
        "emt": list(emt_alloys(counts["emt"])),
        "amber14": list(protein_frames(chains, frames=counts["amber14"] // 2, steps_between=10, workers=0)),
        "chgnet": list(crystals(counts["chgnet"])),
    }


def measure(method: str, structures: list[Structure], workers: int) -> dict[str, float]:
    atoms = sum(s.num_atoms for s in structures)
    labeller = labeller_class(method)()
    labeller(structures[0])  # warm-up: lazy imports, caches
    start = time.perf_counter()
    for s in structures:
        labeller(s)
    one = time.perf_counter() - start
    start = time.perf_counter()
    labelled = list(label_structures(structures, method, workers=workers, progress=False))
    many = time.perf_counter() - start
    assert len(labelled) == len(structures)
    return {
        "structures": len(structures),
        "mean_atoms": atoms / len(structures),
        "one_process_structures_per_s": len(structures) / one,
        "one_process_atoms_per_s": atoms / one,
        "workers": workers,
        "parallel_structures_per_s": len(structures) / many,
        "parallel_seconds_incl_startup": many,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--xtb", type=int, default=100, help="conformers")
    parser.add_argument("--emt", type=int, default=300, help="alloy cells")
    parser.add_argument("--amber14", type=int, default=20, help="protein frames")
    parser.add_argument("--chgnet", type=int, default=40, help="crystals")
    parser.add_argument("--out", default="results/bench_labels.json")
    args = parser.parse_args()
    counts = {"xtb": args.xtb, "emt": args.emt, "amber14": args.amber14, "chgnet": args.chgnet}
    results = {
        method: measure(method, structures, args.workers) for method, structures in workloads(counts).items()
    }
    print(
        f"{'method':<8} {'n':>5} {'atoms':>7} {'1 proc /s':>10} {'atoms/s':>9} {args.workers:>2} workers /s {'s':>6}"
    )
    for method, r in results.items():
        print(
            f"{method:<8} {r['structures']:>5} {r['mean_atoms']:>7.0f} {r['one_process_structures_per_s']:>10.1f} "
            f"{r['one_process_atoms_per_s']:>9.0f} {r['parallel_structures_per_s']:>13.1f} "
            f"{r['parallel_seconds_incl_startup']:>6.1f}"
        )
    summary = {"machine": platform.platform(), "cores": os.cpu_count(), "results": results}
    out = write_text_atomic(args.out, json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
