"""The large-molecule test set of ``bench_accuracy.py``: drug-like molecules of 30–80 atoms that the demo
corpus does not contain, labelled with GFN2-xTB.

    OMP_NUM_THREADS=1 python benchmarks/make_large_molecules.py      # ~1 minute on 2 cores, downloads ~5 MB

Source: MiniDrugBank (openmmforcefields sdist from PyPI, fetched with pip into ``--downloads`` when missing;
``data_pipeline.sources.drug_molecules``). Kept: molecules of ``--min-atoms``..``--max-atoms`` atoms made only
of elements the corpus's training molecules contain, total charge 0 or ±1 (as in the corpus), whose
connectivity (InChIKey first block) is no molecule's of the corpus; each rattled by ≤ 0.02 Å (as the
corpus's conformers are), then labelled with GFN2-xTB through ``data_pipeline.labels`` (one process per
core). Writes an extxyz (energy, forces, charge, spin, level_of_theory per image) that
``atomfm eval --data FILE`` reads, and a JSON summary beside it (count, atom range, elements, labelling time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.atomic_files import atomic_path, write_text_atomic  # noqa: E402
from data_pipeline.corpus_reader import read_split  # noqa: E402
from data_pipeline.labels import label_structures  # noqa: E402
from data_pipeline.schema import Structure  # noqa: E402
from data_pipeline.shards import sha256_of  # noqa: E402
from data_pipeline.sources.drug_molecules import drug_molecules, fetch_minidrugbank  # noqa: E402
from data_pipeline.splits import SPLITS  # noqa: E402

DEFAULT_OUT = "data/large_molecules/minidrugbank-gfn2.extxyz"


def corpus_molecules(corpus: str) -> tuple[set[int], set[str]]:
    """(elements of the corpus's training molecules, connectivity group ids of all its molecules)."""
    elements: set[int] = set()
    groups: set[str] = set()
    for split in SPLITS:
        for s in read_split([corpus], split):
            if s.domain != "molecule":
                continue
            groups.add(s.group_id)
            if split == "train":
                elements.update(int(z) for z in s.atomic_numbers)
    return elements, groups


def labelled_atoms(s: Structure) -> Atoms:
    atoms = Atoms(numbers=s.atomic_numbers, positions=np.asarray(s.positions, dtype=np.float64))
    atoms.calc = SinglePointCalculator(atoms, energy=s.energy, forces=np.asarray(s.forces, dtype=np.float64))
    atoms.info.update(
        key=s.key,
        charge=int(s.charge),
        spin=int(s.spin),
        level_of_theory=s.level_of_theory,
        group_id=s.group_id,
    )
    return atoms


def build_large_molecules(
    out: str | Path = DEFAULT_OUT,
    *,
    corpus: str = "data/demo",
    downloads: str | Path = "data/downloads",
    min_atoms: int = 30,
    max_atoms: int = 80,
    workers: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the labelled set to ``out`` (extxyz) and its summary to ``out`` with ``.json``; return the summary."""
    out = Path(out)
    sdf = fetch_minidrugbank(downloads)
    elements, groups = corpus_molecules(corpus)
    skipped: Counter = Counter()
    candidates = list(
        drug_molecules(
            sdf,
            min_atoms=min_atoms,
            max_atoms=max_atoms,
            elements=elements,
            exclude_groups=groups,
            seed=seed,
            skipped=skipped,
        )
    )
    start = time.perf_counter()
    failed: Counter = Counter()
    labelled = list(label_structures(candidates, "xtb", workers=workers, skip_bad=True, counter=failed))
    label_s = time.perf_counter() - start
    with atomic_path(out) as tmp:
        ase.io.write(tmp, [labelled_atoms(s) for s in labelled], format="extxyz")
    natoms = [s.num_atoms for s in labelled]
    force_norms = np.concatenate([np.linalg.norm(s.forces, axis=1) for s in labelled])
    composition: Counter = Counter()
    for s in labelled:
        composition.update(int(z) for z in s.atomic_numbers)
    summary = {
        "path": str(out),
        "source": "MiniDrugBank.sdf, openmmforcefields sdist (PyPI)",
        "sdf_sha256": sha256_of(sdf),
        "molecules": len(labelled),
        "atoms_min": min(natoms),
        "atoms_max": max(natoms),
        "atoms_mean": float(np.mean(natoms)),
        "elements": {str(z): n for z, n in sorted(composition.items())},
        "charges": dict(Counter(str(s.charge) for s in labelled)),
        "level_of_theory": "gfn2-xtb",
        "mean_force_norm_ev_per_a": float(force_norms.mean()),
        "label_s": round(label_s, 1),
        "label_workers": workers,
        "skipped": dict(skipped),
        "label_failed": dict(failed),
        "excluded_groups_from": corpus,
        "rattle_max_a": 0.02,
        "seed": seed,
    }
    write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="extxyz to write (a .json summary goes beside it)")
    parser.add_argument("--corpus", default="data/demo", help="corpus whose molecules are excluded")
    parser.add_argument("--downloads", default="data/downloads", help="where the sdist and the SDF go")
    parser.add_argument("--min-atoms", type=int, default=30)
    parser.add_argument("--max-atoms", type=int, default=80)
    parser.add_argument("--workers", type=int, default=None, help="xTB processes (default: number of cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = build_large_molecules(
        args.out,
        corpus=args.corpus,
        downloads=args.downloads,
        min_atoms=args.min_atoms,
        max_atoms=args.max_atoms,
        workers=args.workers,
        seed=args.seed,
    )
    print(
        f"{summary['molecules']} molecules, {summary['atoms_min']}–{summary['atoms_max']} atoms "
        f"(mean {summary['atoms_mean']:.1f}), labelled in {summary['label_s']} s; wrote {summary['path']}"
    )


if __name__ == "__main__":
    main()
