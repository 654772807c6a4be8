"""Ingest and inspect throughput: structures/s and atoms/s into shards, and through full verification.

Unlabelled (``--label none``), so it measures the pipeline itself (validate, split, key check, encode,
tar, sha256, atomic manifest after every shard), not a labeller. Prints a table and writes JSON.

    python benchmarks/bench_ingest.py [--copies 20] [--shard-sizes 100 1000] [--out results/bench_ingest.json]

Structures: ASE g2 molecules (gently rattled copies), ASE bulk crystals (supercells, rattled) and the
MDAnalysisTests peptide A6PA6 (rattled frames), all shipped in installed packages.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.collections import g2
from ase.data import chemical_symbols

from data_pipeline.ingest import IngestOptions, ingest_structures
from data_pipeline.inspect_corpus import inspect_corpus
from data_pipeline.readers import read_structures
from data_pipeline.schema import Structure

PEPTIDE = Path(np.__file__).resolve().parents[1] / "MDAnalysisTests" / "data" / "A6PA6_alpha.pdb"


def real_structures(copies: int, seed: int = 0) -> list[Structure]:
    """``copies`` rattled copies of every g2 molecule, elemental crystal and the A6PA6 peptide."""
    rng = np.random.default_rng(seed)
    bases = [
        Structure(f"g2/{name}", "molecule", g2[name].numbers, g2[name].positions, group_id=name)
        for name in g2.names
    ]
    for symbol in chemical_symbols[1:95]:
        try:
            atoms = bulk(symbol).repeat((2, 2, 2))
        except (ValueError, KeyError, RuntimeError):  # no reference lattice in ASE for this element
            continue
        bases.append(
            Structure(
                f"bulk/{symbol}",
                "material",
                atoms.numbers,
                atoms.positions,
                cell=atoms.cell.array,
                pbc=atoms.pbc,
                group_id=symbol,
            )
        )
    bases.extend(read_structures(PEPTIDE))
    out = []
    for c in range(copies):
        for s in bases:
            positions = s.positions + 0.01 * rng.standard_normal(s.positions.shape)
            out.append(
                Structure(
                    f"{s.key}/{c}",
                    s.domain,
                    s.atomic_numbers,
                    positions,
                    cell=s.cell,
                    pbc=s.pbc,
                    group_id=s.group_id,
                    per_atom=s.per_atom,
                )
            )
    return out


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--out", default="results/bench_ingest.json")
    args = parser.parse_args()
    structures = real_structures(args.copies)
    atoms = sum(s.num_atoms for s in structures)
    rows = []
    for shard_size in args.shard_sizes:
        with tempfile.TemporaryDirectory() as folder:
            options = IngestOptions(source="bench", shard_size=shard_size, progress=False)
            ingest_s, record = timed(ingest_structures, structures, folder, options)
            rerun_s, _ = timed(ingest_structures, structures, folder, options)
            verify_s, report = timed(inspect_corpus, folder)
            assert not report["verification"]["bad"]
            size = sum(p.stat().st_size for p in Path(folder).glob("*.tar"))
        rows.append(
            {
                "shard_size": shard_size,
                "structures": len(structures),
                "atoms": atoms,
                "shards": record["shards"],
                "megabytes": size / 1e6,
                "ingest_structures_per_s": len(structures) / ingest_s,
                "ingest_atoms_per_s": atoms / ingest_s,
                "resume_check_s": rerun_s,
                "verify_structures_per_s": len(structures) / verify_s,
                "verify_megabytes_per_s": size / 1e6 / verify_s,
            }
        )
    print(f"{len(structures)} structures, {atoms} atoms ({platform.processor() or platform.machine()})")
    print(
        f"{'shard size':>10} {'shards':>7} {'MB':>7} {'ingest st/s':>12} {'ingest atoms/s':>15} "
        f"{'rerun s':>8} {'verify st/s':>12} {'verify MB/s':>12}"
    )
    for r in rows:
        print(
            f"{r['shard_size']:>10} {r['shards']:>7} {r['megabytes']:>7.1f} {r['ingest_structures_per_s']:>12.0f} "
            f"{r['ingest_atoms_per_s']:>15.0f} {r['resume_check_s']:>8.2f} {r['verify_structures_per_s']:>12.0f} "
            f"{r['verify_megabytes_per_s']:>12.1f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "ingest", "machine": platform.node(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
