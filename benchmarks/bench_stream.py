"""Stream throughput: structures/s and atoms/s through read + decode + neighbour list + packing + collation.

Per domain (and all domains mixed), with 1 and 2 DataLoader worker processes, plus how fast a resume
replays the sample plan (samples/s, no shard read). Prints a table and writes JSON.

    python benchmarks/bench_stream.py [--corpus DIR ...] [--seconds 8] [--workers 1 2] [--out results/bench_stream.json]

Without ``--corpus`` a temporary corpus is built from real structures shipped in packages: ASE g2 molecules
(gently rattled copies), ASE bulk crystals of every element ASE has a reference lattice for (supercells,
rattled), and four proteins from MDAnalysisTests (137 to 3,341 atoms, rattled frames).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import biotite.structure.io.pdb as pdb
import numpy as np
import torch
from ase.build import bulk, molecule
from ase.collections import g2
from ase.data import atomic_numbers, chemical_symbols

from data_pipeline.atomic_files import write_text_atomic
from data_pipeline.manifest import Manifest, write_manifest
from data_pipeline.schema import Structure, validate
from data_pipeline.shards import ShardWriter
from data_pipeline.stream import StreamConfig, StructureStream
from data_pipeline.stream_plan import ReaderSlot, SamplePlan

PROTEIN_FILES = ("A6PA6_alpha.pdb", "5a7u.pdb", "4E43.pdb", "adk_open.pdb")


def build_corpus(folder: Path, copies: int = 4, seed: int = 0) -> Path:
    """A three-domain corpus of real structures (unlabelled: labels do not change the stream's work much)."""
    rng = np.random.default_rng(seed)
    structures = {"molecule": [], "material": [], "protein": []}
    for name in sorted(g2.names):
        atoms = molecule(name)
        for c in range(copies):
            positions = atoms.positions + 0.02 * rng.standard_normal(atoms.positions.shape)
            structures["molecule"].append(
                Structure(
                    f"g2/{name}/{c}", "molecule", atoms.numbers, positions, group_id=name, split="train"
                )
            )
    for symbol in chemical_symbols[1:95]:
        try:
            crystal = bulk(symbol)
        except (ValueError, KeyError, RuntimeError):  # no reference lattice in ASE for this element
            continue
        for c in range(copies):
            atoms = crystal.repeat((1 + c % 2, 2, 2))
            atoms.rattle(0.03, seed=seed + c)
            structures["material"].append(
                Structure(
                    f"bulk/{symbol}/{c}",
                    "material",
                    atoms.numbers,
                    atoms.positions,
                    cell=atoms.cell.array,
                    pbc=atoms.pbc,
                    group_id=symbol,
                    split="train",
                )
            )
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    for name in PROTEIN_FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # elements guessed from atom names
            array = pdb.PDBFile.read(str(data / name)).get_structure(model=1)
        array = array[~array.hetero]
        z = np.array([atomic_numbers[e.capitalize()] for e in array.element])
        residue_index = np.cumsum(np.r_[0, np.diff(array.res_id) != 0])
        for c in range(4 * copies):
            positions = array.coord + 0.02 * rng.standard_normal(array.coord.shape)
            structures["protein"].append(
                Structure(
                    f"{name}/{c}",
                    "protein",
                    z,
                    positions,
                    group_id=name,
                    split="train",
                    per_atom={"residue_index": residue_index},
                )
            )
    manifest = Manifest()
    for domain, records in structures.items():
        with ShardWriter(folder, source="bench", domain=domain, split="train", shard_size=64) as writer:
            for s in records:
                writer.write(validate(s))
        manifest.shards.extend(writer.finished)
    write_manifest(folder, manifest)
    return folder


def measure(cfg: StreamConfig, seconds: float, warmup_batches: int = 2) -> dict[str, float]:
    """Throughput after ``warmup_batches`` (worker start-up excluded), over about ``seconds`` of streaming."""
    stream = StructureStream(cfg)
    batches = structures = atoms = edges = 0
    start = None
    for i, batch in enumerate(stream):
        if i == warmup_batches:
            start = time.perf_counter()
        if start is None:
            continue
        batches += 1
        structures += batch.num_graphs
        atoms += batch.num_nodes
        edges += batch.edge_index.shape[1]
        if time.perf_counter() - start >= seconds:
            break
    wall = time.perf_counter() - start
    return {
        "batches": batches,
        "structures": structures,
        "atoms": atoms,
        "seconds": wall,
        "structures_per_s": structures / wall,
        "atoms_per_s": atoms / wall,
        "edges_per_s": edges / wall,
        "atoms_per_batch": atoms / batches,
        "fill": atoms / batches / cfg.max_atoms,
        "skipped": sum(stream.stats.skipped_samples.values()),
    }


def measure_replay(stream: StructureStream, samples: int = 200_000) -> dict[str, float]:
    """How fast a resume replays one reader's plan (manifest only)."""
    cfg = stream.cfg
    plan = SamplePlan(
        stream.table,
        stream.probabilities,
        slot=ReaderSlot(0, 1),
        epoch=0,
        repeat=True,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        max_atoms=cfg.max_atoms,
        max_structures=cfg.max_structures,
    )
    count = 0
    start = time.perf_counter()
    for batch in plan:
        count += len(batch)
        if count >= samples:
            break
    wall = time.perf_counter() - start
    return {"samples": count, "seconds": wall, "samples_per_s": count / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", nargs="*", default=None, help="corpus folders (default: build a temporary one)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="streaming time per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts")
    parser.add_argument("--max-atoms", type=int, default=2048)
    parser.add_argument("--cutoff", type=float, default=6.0, help="neighbour-list cutoff, Å")
    parser.add_argument("--out", default="results/bench_stream.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.corpus:
            corpora = args.corpus
        else:
            start = time.perf_counter()
            corpora = [str(build_corpus(Path(tmp) / "corpus"))]
            print(f"built a temporary corpus in {time.perf_counter() - start:.1f} s")
        base = {"corpus": corpora, "max_atoms": args.max_atoms, "cutoff": args.cutoff, "repeat": True}
        probe = StructureStream(StreamConfig(**base, num_workers=0))
        domains = [d for d, p in probe.probabilities.items() if p > 0]
        rows = []
        for domain in [*domains, "mixed"]:
            weights = None if domain == "mixed" else {domain: 1.0}
            for workers in args.workers:
                cfg = StreamConfig(**base, domain_weights=weights, num_workers=workers)
                rows.append({"domain": domain, "workers": workers, **measure(cfg, args.seconds)})
        replay = measure_replay(probe)

    header = f"{'domain':<10}{'workers':>8}{'structures/s':>14}{'atoms/s':>12}{'edges/s':>12}{'atoms/batch':>13}{'fill':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['domain']:<10}{r['workers']:>8}{r['structures_per_s']:>14.1f}{r['atoms_per_s']:>12.0f}"
            f"{r['edges_per_s']:>12.0f}{r['atoms_per_batch']:>13.0f}{r['fill']:>7.2f}"
        )
    print(f"resume replay: {replay['samples_per_s']:,.0f} samples/s per reader (plan only, no shard read)")

    result = {
        "benchmark": "stream",
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"corpus": corpora},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "rows": rows,
        "resume_replay": replay,
    }
    out = write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
