"""Planning at scale: memory and time for one rank to plan an epoch of a 10M-structure corpus in 20k shards,
with the per-sample atom counts inline in manifest.json (version 1) and in a file beside each shard (version 2).

The corpus is synthetic (the manifest, shard lists and atom-counts files only; no tar is read to plan): three
sources of 500-sample shards, molecules (5-60 atoms), materials (2-200) and proteins (300-5,000). Each format
is measured in a fresh process, as a rank of a ``--ranks`` x ``--workers`` job sees it:

- load: read the manifest and build the stream's shard table (``load_shard_table``);
- plan: the rank's ``--workers`` reader slots each plan their whole epoch (shard split, shuffle buffer, domain
  mix, packing by atoms: ``SamplePlan``), reading the atom counts they need;
- memory: peak RSS of the process over its imports, and tracemalloc's peak (a second run, tracing).

Prints a table and writes JSON.

    python benchmarks/bench_manifest.py [--structures 10000000] [--shards 20000] [--ranks 1024] [--workers 8]
                                        [--out results/bench_manifest.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

# Only what ``measure`` needs is imported at the top, so that it also runs on an older data_pipeline (--code).
from data_pipeline.stream_plan import ReaderSlot, SamplePlan, load_shard_table

REPO = Path(__file__).resolve().parents[1]
# source, domain, share of the shards, atoms per structure (low, high), elements
SOURCES = (
    ("molecules", "molecule", 0.7, (5, 60), {"H": 0.5, "C": 0.3, "N": 0.1, "O": 0.1}),
    ("materials", "material", 0.2, (2, 200), {"Si": 0.4, "O": 0.3, "Fe": 0.2, "Ni": 0.1}),
    ("proteins", "protein", 0.1, (300, 5000), {"H": 0.5, "C": 0.3, "N": 0.1, "O": 0.1}),
)


def synthetic_shards(structures: int, shards: int, seed: int = 0) -> list:
    """Entries (``ShardInfo``) of ``shards`` train shards holding ``structures`` samples, counts inline."""
    from data_pipeline.manifest import ShardInfo
    from data_pipeline.shards import shard_name

    rng = np.random.default_rng(seed)
    per_shard = structures // shards
    infos = []
    for source, domain, share, (low, high), elements in SOURCES:
        count = round(shards * share) if source != SOURCES[-1][0] else shards - len(infos)
        for index in range(count):
            natoms = rng.integers(low, high + 1, size=per_shard)
            total = int(natoms.sum())
            infos.append(
                ShardInfo(
                    path=shard_name(source, domain, "train", index),
                    domain=domain,
                    split="train",
                    source=source,
                    num_samples=per_shard,
                    num_atoms=total,
                    elements={el: int(total * f) for el, f in elements.items()},
                    levels_of_theory={"gfn2-xtb": per_shard},
                    labels={"energy": per_shard, "forces": per_shard},
                    bytes=per_shard * 4096,
                    sha256=f"{index:064x}",
                    natoms=natoms.tolist(),
                )
            )
    return infos


def write_version_1(folder: Path, infos: list) -> None:
    """``manifest.json`` as atomfm wrote it before the atom-counts files: every count inline."""
    from data_pipeline.manifest import FORMAT, Manifest

    manifest = Manifest(shards=infos)
    entries = []
    for info in infos:
        entry = asdict(info)
        del entry["max_atoms"], entry["natoms_file"]
        entries.append(entry)
    raw = {"format": FORMAT, "version": 1, "corpus": manifest.summary(), "sources": {}, "shards": entries}
    (folder / "manifest.json").write_text(json.dumps(raw, indent=1))


def write_version_2(folder: Path, infos: list) -> None:
    """``manifest.json``, one shard list per source and an atom-counts file per shard (the layout ingest writes,
    without its per-file fsync, to build 20k files quickly)."""
    from data_pipeline.atom_counts import atom_counts_name, encode_atom_counts
    from data_pipeline.manifest import AtomCountsFile, Manifest, shard_list_name

    converted = []
    by_source: dict[str, list[str]] = {}
    for info in infos:
        data = encode_atom_counts(info.natoms)
        name = atom_counts_name(info.path)
        (folder / name).write_bytes(data)
        counts_file = AtomCountsFile(name, len(data), hashlib.sha256(data).hexdigest())
        entry = replace(info, natoms=None, max_atoms=max(info.natoms), natoms_file=counts_file)
        converted.append(entry)
        by_source.setdefault(info.source, []).append(json.dumps({"shard": entry.to_dict()}) + "\n")
    for source, text in by_source.items():
        (folder / shard_list_name(source)).write_text("".join(text))
    (folder / "manifest.json").write_text(json.dumps(Manifest(shards=converted).to_dict(), indent=1))


def measure(folder: str, ranks: int, workers: int, trace: bool) -> dict:
    """Rank 0's load and plan; run in a fresh process."""
    from data_pipeline.mixing import domain_probabilities

    base_rss = _memory_mb("VmRSS")
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    table = load_shard_table([folder], "train")
    loaded = time.perf_counter()
    sizes: Counter = Counter()
    for entry in table:
        sizes[entry.domain] += entry.num_samples
    probabilities = domain_probabilities(sizes, None, 1.0)
    slots = ranks * workers
    batches = samples = 0
    for worker in range(workers):
        plan = SamplePlan(
            table,
            probabilities,
            slot=ReaderSlot(worker, slots),
            epoch=0,
            repeat=False,
            seed=0,
            shuffle_buffer=1000,
            max_atoms=2048,
            max_structures=None,
        )
        for batch in plan:
            batches += 1
            samples += len(batch)
    planned = time.perf_counter()
    result = {
        "shards": len(table),
        "structures": sum(sizes.values()),
        "rank_samples": samples,
        "rank_batches": batches,
        "load_s": loaded - started,
        "plan_s": planned - loaded,
        "base_rss_mb": base_rss,
        "peak_rss_mb": _memory_mb("VmHWM"),
    }
    if trace:
        result["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    return result


def _memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, MB; unlike ``ru_maxrss``, the peak does not carry
    over the parent's across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(folder: Path, ranks: int, workers: int, trace: bool, code_dir: Path = REPO) -> dict:
    """``measure`` in a new process, importing ``data_pipeline`` from ``code_dir``."""
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from benchmarks.bench_manifest import measure; "
        "print(json.dumps(measure(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == '1')))"
    )
    args = [
        sys.executable,
        "-c",
        code,
        str(code_dir),
        str(REPO),
        str(folder),
        str(ranks),
        str(workers),
        str(int(trace)),
    ]
    env = {**os.environ, "PYTHONPATH": f"{code_dir}:{REPO}"}
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_size(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=20_000)
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--trace", action="store_true", help="also run each measure under tracemalloc (slower)"
    )
    parser.add_argument(
        "--before-code",
        default=None,
        help="a folder holding an older data_pipeline (git archive COMMIT data_pipeline | tar -x -C DIR): "
        "the version 1 corpus is also measured with it",
    )
    parser.add_argument("--out", default="results/bench_manifest.json")
    parser.add_argument(
        "--keep", default=None, help="build the corpora in this folder and keep them (a rerun reuses them)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        folders = {"v1": root / "v1", "v2": root / "v2"}
        built = root / f"built-{args.structures}-{args.shards}"
        if built.exists():
            print(f"reusing the corpora under {root}", flush=True)
        else:
            started = time.perf_counter()
            infos = synthetic_shards(args.structures, args.shards)
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            write_version_1(folders["v1"], infos)
            write_version_2(folders["v2"], infos)
            del infos
            built.touch()
            print(f"built both corpora in {time.perf_counter() - started:.0f} s under {root}", flush=True)
        runs = [("v1 inline", folders["v1"], REPO), ("v2 side files", folders["v2"], REPO)]
        if args.before_code:
            runs.insert(0, ("v1, old code", folders["v1"], Path(args.before_code).resolve()))
        rows = []
        for name, folder, code_dir in runs:
            row = {
                "format": name,
                "code": str(code_dir),
                "manifest_json_mb": (folder / "manifest.json").stat().st_size / 2**20,
                "shard_lists_mb": folder_size(folder, "*.shards.jsonl") / 2**20,
                "atom_counts_mb": folder_size(folder, "*.natoms.npy") / 2**20,
                **in_fresh_process(folder, args.ranks, args.workers, False, code_dir),
            }
            if args.trace:
                row["traced_peak_mb"] = in_fresh_process(folder, args.ranks, args.workers, True, code_dir)[
                    "traced_peak_mb"
                ]
            assert row["structures"] == args.structures // args.shards * args.shards
            rows.append(row)
            print(f"measured {name}: {row['load_s'] + row['plan_s']:.0f} s", flush=True)
    print(
        f"{args.structures:,} structures in {args.shards:,} shards; rank 0 of {args.ranks} x {args.workers} "
        f"workers plans {rows[-1]['rank_samples']:,} samples in {rows[-1]['rank_batches']:,} batches"
    )
    header = (
        f"{'format':<14} {'manifest.json':>13} {'lists':>8} {'counts':>8} {'load s':>7} {'plan s':>7} "
        f"{'peak RSS MB':>11} {'traced MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        traced = f"{r['traced_peak_mb']:>9.0f}" if "traced_peak_mb" in r else f"{'-':>9}"
        print(
            f"{r['format']:<14} {r['manifest_json_mb']:>10.1f} MB {r['shard_lists_mb']:>5.1f} MB "
            f"{r['atom_counts_mb']:>5.1f} MB {r['load_s']:>7.2f} {r['plan_s']:>7.2f} {r['peak_rss_mb']:>11.0f} "
            f"{traced}"
        )
    print(f"(peak RSS includes the {rows[-1]['base_rss_mb']:.0f} MB the process holds after its imports)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("structures", "shards", "ranks", "workers")}
    out.write_text(
        json.dumps(
            {"benchmark": "manifest", "machine": platform.node(), "settings": settings, "rows": rows},
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
