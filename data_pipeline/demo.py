"""`atomfm data demo`: the three-domain demo corpus, built here from real structures that packages ship.

Four sources go into one corpus folder, each through the ingest stage with its own labeller:

| source | domain | structures | labels |
| --- | --- | --- | --- |
| ``molecules`` | molecule | CCD ideal geometries, NCI SMILES conformers, G2 | GFN2-xTB |
| ``proteins`` | protein | amber14 vacuum MD frames of real chains | amber14 |
| ``alloys`` | material | random fcc alloys of Al, Ni, Cu, Pd, Ag, Pt, Au | EMT |
| ``crystals`` | material | AFLOW prototypes, pymatgen and ASE crystals | CHGNet |

Shard sizes give every source at least four shards (two ranks × two loader workers). Re-running with the
same scale and seed resumes an interrupted build and leaves a finished one as it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.ingest import IngestOptions, ingest_structures
from data_pipeline.labels.process_pool import default_workers
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.sources import (
    ccd_molecules,
    crystals,
    emt_alloys,
    g2_molecules,
    protein_frames,
    read_smiles,
    shipped_protein_chains,
    smiles_conformers,
)

MIN_SHARDS_PER_SOURCE = 4


@dataclass(frozen=True)
class DemoScale:
    """How much of each source one scale takes."""

    ccd_components: int
    ccd_copies: int
    smiles_molecules: int
    conformers_per_molecule: int
    g2_molecules: int
    protein_chains: int
    frames_per_chain: int
    md_steps_between_frames: int
    max_residues: int
    alloy_cells: int
    crystals: int
    crystal_copies: int

    @property
    def molecules(self) -> int:
        return (
            self.ccd_components * self.ccd_copies
            + self.smiles_molecules * self.conformers_per_molecule
            + self.g2_molecules
        )


SCALES: dict[str, DemoScale] = {
    "smoke": DemoScale(
        ccd_components=12,
        ccd_copies=1,
        smiles_molecules=6,
        conformers_per_molecule=3,
        g2_molecules=10,
        protein_chains=4,
        frames_per_chain=3,
        md_steps_between_frames=10,
        max_residues=90,
        alloy_cells=24,
        crystals=4,
        crystal_copies=1,
    ),
    "demo": DemoScale(
        ccd_components=400,
        ccd_copies=2,
        smiles_molecules=500,
        conformers_per_molecule=4,
        g2_molecules=162,
        protein_chains=8,
        frames_per_chain=5,
        md_steps_between_frames=25,
        max_residues=180,
        alloy_cells=1500,
        crystals=200,
        crystal_copies=1,
    ),
    "full": DemoScale(
        ccd_components=10000,
        ccd_copies=2,
        smiles_molecules=2882,
        conformers_per_molecule=4,
        g2_molecules=162,
        protein_chains=75,
        frames_per_chain=20,
        md_steps_between_frames=50,
        max_residues=400,
        alloy_cells=15000,
        crystals=437,
        crystal_copies=5,
    ),
}


@dataclass(frozen=True)
class DemoPart:
    """One source of the corpus: what builds its structures and how they are labelled."""

    source: str
    domain: str
    label: str
    expected: int
    structures: Callable[[], Iterator[Structure]]


def worth_starting(work: int, per_process: int, workers: int) -> int:
    """Processes worth starting for ``work`` units when one process should get ``per_process`` or more.

    Each process costs seconds of imports (torch, OpenMM): tiny parts run in fewer of them.
    """
    return min(workers, work // per_process)


def demo_parts(scale: DemoScale, *, seed: int, workers: int) -> list[DemoPart]:
    def molecules() -> Iterator[Structure]:
        smiles = read_smiles()
        chosen = np.random.default_rng(seed).permutation(len(smiles))[: scale.smiles_molecules]
        conformers = scale.smiles_molecules * scale.conformers_per_molecule
        return chain(
            ccd_molecules(scale.ccd_components, seed=seed, copies=scale.ccd_copies),
            smiles_conformers(
                [smiles[i] for i in sorted(chosen)],
                conformers=scale.conformers_per_molecule,
                seed=seed,
                workers=worth_starting(conformers, 200, workers),
            ),
            islice(g2_molecules(), scale.g2_molecules),
        )

    def proteins() -> Iterator[Structure]:
        chains = shipped_protein_chains()
        order = np.random.default_rng(seed).permutation(len(chains))
        return protein_frames(
            [chains[i] for i in order],
            limit=scale.protein_chains,
            frames=scale.frames_per_chain,
            steps_between=scale.md_steps_between_frames,
            seed=seed,
            max_residues=scale.max_residues,
            workers=worth_starting(scale.protein_chains, 2, workers),
        )

    return [
        DemoPart("molecules", "molecule", "xtb", scale.molecules, molecules),
        DemoPart("proteins", "protein", "amber14", scale.protein_chains * scale.frames_per_chain, proteins),
        DemoPart(
            "alloys", "material", "emt", scale.alloy_cells, lambda: emt_alloys(scale.alloy_cells, seed=seed)
        ),
        DemoPart(
            "crystals",
            "material",
            "chgnet",
            scale.crystals * scale.crystal_copies,
            lambda: crystals(scale.crystals, copies=scale.crystal_copies, seed=seed),
        ),
    ]


def build_demo_corpus(
    out_dir: str | Path,
    scale: str = "smoke",
    workers: int | None = None,
    seed: int = 0,
    *,
    protein_chains: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or resume) the demo corpus in ``out_dir``; returns timings, per-source records and totals.
    ``protein_chains``: that many protein chains instead of the scale's (e.g. enough for a protein val split)."""
    if scale not in SCALES:
        raise BadInputError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}", field="scale")
    if protein_chains is not None and protein_chains < 1:
        raise BadInputError(f"must be at least 1, got {protein_chains}", field="protein-chains")
    workers = default_workers() if workers is None else workers
    plan = SCALES[scale]
    if protein_chains is not None:
        plan = replace(plan, protein_chains=protein_chains)
    started = time.perf_counter()
    parts: dict[str, Any] = {}
    for part in demo_parts(plan, seed=seed, workers=workers):
        part_started = time.perf_counter()
        options = IngestOptions(
            source=part.source,
            domain=part.domain,
            label=part.label,
            shard_size=max(1, part.expected // (MIN_SHARDS_PER_SOURCE + 1)),
            skip_bad=True,
            workers=max(1, worth_starting(part.expected, 16, workers)),
            seed=seed,
            inputs={"builder": "atomfm data demo", "scale": scale, "seed": seed, **asdict(plan)},
            progress=progress,
        )
        record = ingest_structures(part.structures(), out_dir, options)
        parts[part.source] = {
            "label": part.label,
            "seconds": round(time.perf_counter() - part_started, 1),
            **{k: record.get(k) for k in ("structures", "atoms", "shards", "skipped")},
        }
    return {
        "out_dir": str(out_dir),
        "scale": scale,
        "seed": seed,
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 1),
        "sources": parts,
        "corpus": read_manifest(out_dir).summary(),
    }


def print_summary(result: dict[str, Any]) -> None:
    print(
        f"demo corpus ({result['scale']}, seed {result['seed']}, {result['workers']} workers) → "
        f"{result['out_dir']} in {result['seconds']:.0f} s"
    )
    print(
        f"  {'source':<10} {'label':<8} {'structures':>10} {'atoms':>10} {'shards':>6} {'skipped':>7} {'s':>6}"
    )
    for name, part in result["sources"].items():
        skipped = sum((part["skipped"] or {}).values())
        print(
            f"  {name:<10} {part['label']:<8} {part['structures']:>10} {part['atoms']:>10} {part['shards']:>6} "
            f"{skipped:>7} {part['seconds']:>6.0f}"
        )
    corpus = result["corpus"]
    print(
        f"  total: {corpus['num_structures']} structures, {corpus['num_atoms']} atoms, "
        f"{corpus['num_shards']} shards; splits " + ", ".join(f"{k} {v}" for k, v in corpus["splits"].items())
    )
    print("  levels of theory: " + ", ".join(f"{k} {v}" for k, v in corpus["levels_of_theory"].items()))


def main(args: argparse.Namespace) -> int:
    """The `atomfm data demo` command."""
    try:
        result = build_demo_corpus(
            args.out,
            scale=args.scale,
            workers=args.workers,
            seed=args.seed,
            protein_chains=args.protein_chains,
        )
    except BadInputError as err:
        print(f"atomfm data demo: error: {err}", file=sys.stderr)
        return 2
    print_summary(result)
    return 0
