"""`atomfm data ingest`: structure files, folders and globs → one source of a corpus (shards + manifest).

Finds the input files, names the source and its record keys, describes the inputs for the resume
fingerprint, and hands the records to :func:`data_pipeline.ingest.ingest_structures`.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from itertools import chain
from pathlib import Path
from typing import Any

from data_pipeline.ingest import IngestOptions, check_source_name, ingest_structures
from data_pipeline.readers import READERS, ReaderOptions, read_structures, supported_suffixes
from data_pipeline.readers.sources import split_name
from data_pipeline.schema import BadInputError
from data_pipeline.splits import parse_fractions


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_known_format(path: Path) -> bool:
    return path.name.lower().endswith(supported_suffixes())


def resolve_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files named by INPUT arguments: files as given, folders searched recursively for known formats, globs."""
    files: list[Path] = []
    for arg in inputs:
        if _has_glob(arg):
            found = [Path(p) for p in sorted(glob.glob(arg, recursive=True))]
            found = [p for p in found if p.is_file() and _is_known_format(p)]
            if not found:
                raise BadInputError("the pattern matches no structure file of a known format", path=arg)
        elif Path(arg).is_dir():
            found = [p for p in sorted(Path(arg).rglob("*")) if p.is_file() and _is_known_format(p)]
            if not found:
                raise BadInputError("the folder holds no structure file of a known format", path=arg)
        elif not Path(arg).is_file():
            raise BadInputError("no such file or folder", path=arg)
        elif not _is_known_format(Path(arg)):
            raise BadInputError(
                f"unknown file format; supported: {', '.join(READERS)} "
                "(text formats also with .gz, .bz2, .xz)",
                path=arg,
                field="suffix",
            )
        else:
            found = [Path(arg)]
        files.extend(found)
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def key_prefixes(files: Sequence[Path], source: str) -> dict[Path, str]:
    """First part of each file's record keys: ``source`` for one file; for several, ``source/`` plus the
    file's path below their common folder without its format suffix (``mols/set1/water``), so keys stay unique."""
    if len(files) == 1:
        return {files[0]: source}
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    prefixes = {}
    for f, r in zip(files, resolved, strict=True):
        relative = r.relative_to(common)
        prefixes[f] = "/".join([source, *relative.parent.parts, split_name(relative)[0]])
    return prefixes


def default_source_name(inputs: Sequence[str]) -> str:
    """The source name when none is given: the first INPUT's file stem or folder name (a glob: its folder)."""
    arg = inputs[0]
    if _has_glob(arg):
        arg = re.split(r"[*?\[]", arg, maxsplit=1)[0].rstrip("/") or "."
    path = Path(arg).resolve()
    name = path.name if path.is_dir() else split_name(path)[0]
    return check_source_name(re.sub(r"[^A-Za-z0-9_.+-]", "_", name))


def _describe_inputs(files: list[Path], options: ReaderOptions) -> dict[str, Any]:
    reader = {k: v for k, v in asdict(options).items() if k != "skip_bad"}
    described = []
    for f in files:
        stat = f.stat()
        described.append({"path": str(f.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {"files": described, "reader": reader}


def _print_record(source: str, out_dir: str, record: dict[str, Any]) -> None:
    print(
        f"source {source}: {record['structures']} structures, {record['atoms']} atoms in "
        f"{record['shards']} shards → {out_dir}"
    )
    for name, count in record["domains"].items():
        print(f"  {name:<10} {count:>10}")
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in record["splits"].items()))
    if record["skipped"]:
        print(f"  skipped {sum(record['skipped'].values())} records:")
        for reason, count in record["skipped"].items():
            print(f"    {count:>8}  {reason}")
    last = record["runs"][-1]
    if last["resumed"]:
        print(f"  last run resumed after {last['resumed']} records already done, and wrote {last['written']}")


def main(args: argparse.Namespace) -> int:
    """The `atomfm data ingest` command."""
    try:
        files = resolve_inputs(args.inputs)
        source = check_source_name(args.source) if args.source else default_source_name(args.inputs)
        fractions = parse_fractions(args.split_fractions)
        reader = ReaderOptions(
            protein_models=args.protein_models,
            altloc=args.altloc,
            keep_water=args.keep_water,
            keep_ligands=args.keep_ligands,
            skip_bad=args.skip_bad,
        )
        counter: Counter = Counter()
        prefixes = key_prefixes(files, source)
        structures = chain.from_iterable(
            read_structures(f, domain=args.domain, options=reader, source=prefixes[f], counter=counter)
            for f in files
        )
        options = IngestOptions(
            source=source,
            domain=args.domain,
            label=args.label,
            shard_size=args.shard_size,
            skip_bad=args.skip_bad,
            workers=args.workers,
            seed=args.seed,
            split_fractions=fractions,
            rebuild=args.rebuild,
            inputs=_describe_inputs(files, reader),
        )
        record = ingest_structures(structures, args.out, options, skipped=counter)
    except BadInputError as err:
        print(f"atomfm data ingest: error: {err}", file=sys.stderr)
        return 2
    _print_record(source, args.out, record)
    return 0
