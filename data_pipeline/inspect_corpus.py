"""`atomfm data inspect`: what a corpus holds, and whether every shard on disk is the one the manifest lists.

The summary comes from ``manifest.json`` alone. Verification checks each listed shard's size and sha256,
then reads it through webdataset's tar reader and decodes every sample, which catches truncated tars and
damaged samples; shard files the manifest does not list (orphans, unfinished ``.tar.tmp``) are reported too.
The manifest is checked against itself and its atom-counts files: a source whose record counts other shards or
structures than the manifest lists for it, or a shard whose atom-counts file is missing, truncated or disagrees
with its entry, makes the corpus inconsistent (naming the source and its unlisted shard files, or the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset.tariterators import tarfile_samples

from data_pipeline.atom_counts import SUFFIX as ATOM_COUNTS_SUFFIX
from data_pipeline.atom_counts import decode_atom_counts
from data_pipeline.corpus_location import is_remote
from data_pipeline.manifest import VERSION, Manifest, ShardInfo, read_manifest
from data_pipeline.sample_codec import decode_sample
from data_pipeline.schema import BadInputError
from data_pipeline.shards import TMP_SUFFIX, sha256_of, shard_pattern

LABELS: tuple[str, ...] = ("energy", "forces", "stress")
TOP_ELEMENTS = 8
MAX_SAMPLE_PROBLEMS = 3


@dataclass
class DomainStats:
    """Totals of one domain over its shards."""

    structures: int = 0
    atoms: int = 0
    max_atoms: int = 0
    shards: int = 0
    bytes: int = 0
    splits: Counter = field(default_factory=Counter)
    elements: Counter = field(default_factory=Counter)
    levels_of_theory: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def add(self, info: ShardInfo) -> None:
        self.structures += info.num_samples
        self.atoms += info.num_atoms
        self.max_atoms = max(self.max_atoms, info.max_atoms or 0)
        self.shards += 1
        self.bytes += info.bytes
        self.splits[info.split] += info.num_samples
        self.elements.update(info.elements)
        self.levels_of_theory.update(info.levels_of_theory)
        self.labels.update(info.labels)

    def to_dict(self) -> dict[str, Any]:
        n = max(self.structures, 1)
        return {
            "structures": self.structures,
            "atoms": self.atoms,
            "mean_atoms": self.atoms / n,
            "max_atoms": self.max_atoms,
            "shards": self.shards,
            "bytes": self.bytes,
            "splits": dict(sorted(self.splits.items())),
            "elements": dict(self.elements.most_common()),
            "levels_of_theory": dict(self.levels_of_theory.most_common()),
            "label_coverage": {name: 100.0 * self.labels[name] / n for name in LABELS},
        }


def domain_stats(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Per-domain totals: structures, atoms (mean, max), splits, elements, levels of theory, label coverage (%)."""
    stats: dict[str, DomainStats] = {}
    for info in manifest.shards:
        stats.setdefault(info.domain, DomainStats()).add(info)
    return {name: s.to_dict() for name, s in sorted(stats.items())}


def read_problems(path: Path, info: ShardInfo) -> list[str]:
    """Read the whole tar as the stream will (webdataset) and decode every sample; what went wrong, if anything."""
    problems: list[str] = []
    bad_samples: list[str] = []
    count = 0
    try:
        for sample in tarfile_samples([{"url": str(path)}]):
            count += 1
            try:
                decode_sample(sample, source=str(path))
            except BadInputError as err:
                bad_samples.append(
                    f"{sample.get('__key__')} (record {err.record}, field {err.field}: {err.reason})"
                )
    except Exception as err:  # tarfile, gzip and webdataset raise many types on damaged bytes
        reason = err.args[0] if err.args else type(err).__name__
        problems.append(f"unreadable tar after {count} samples ({type(err).__name__}: {reason})")
    else:
        if count != info.num_samples:
            problems.append(f"{count} samples in the tar, {info.num_samples} in the manifest")
    if bad_samples:
        more = (
            f" and {len(bad_samples) - MAX_SAMPLE_PROBLEMS} more"
            if len(bad_samples) > MAX_SAMPLE_PROBLEMS
            else ""
        )
        problems.append(f"undecodable sample key {', '.join(bad_samples[:MAX_SAMPLE_PROBLEMS])}{more}")
    return problems


def shard_problems(corpus: Path, info: ShardInfo, *, verify: bool = True) -> list[str]:
    """What is wrong with one listed shard: missing, size or sha256 mismatch, unreadable tar, undecodable samples."""
    path = corpus / info.path
    if not path.is_file():
        return ["missing"]
    problems = []
    size = path.stat().st_size
    if size != info.bytes:
        problems.append(f"size mismatch: {size} bytes on disk, {info.bytes} in the manifest")
    if not verify:
        return problems
    digest = sha256_of(path)
    if digest != info.sha256:
        problems.append(
            f"checksum mismatch: sha256 {digest[:16]}… on disk, {info.sha256[:16]}… in the manifest"
        )
    return problems + read_problems(path, info)


def atom_counts_problem(corpus: Path, info: ShardInfo, *, verify: bool = True) -> str | None:
    """What is wrong with a listed shard's atom-counts file (version 2): missing, truncated, damaged, or
    counts that disagree with the shard's entry; None if nothing."""
    if info.natoms_file is None:
        return None
    name, path = info.natoms_file.path, corpus / info.natoms_file.path
    if not path.is_file():
        return f"its atom counts file {name} is missing"
    size = path.stat().st_size
    if size != info.natoms_file.bytes:
        return f"its atom counts file {name} is truncated or damaged: {size} bytes on disk, {info.natoms_file.bytes} listed"
    if verify:
        try:
            decode_atom_counts(
                path.read_bytes(),
                where=name,
                num_samples=info.num_samples,
                num_atoms=info.num_atoms,
                sha256=info.natoms_file.sha256,
            )
        except BadInputError as err:
            return f"its atom counts file {name} is wrong: {err.reason}"
    return None


def orphan_files(corpus: Path, manifest: Manifest) -> list[str]:
    """Shard and atom-counts files in the corpus folder that the manifest does not list, and unfinished
    temporary shards."""
    listed = {s.path for s in manifest.shards} | {
        s.natoms_file.path for s in manifest.shards if s.natoms_file
    }
    return sorted(
        p.name
        for p in corpus.iterdir()
        if p.is_file()
        and (
            (p.name.endswith((".tar", ATOM_COUNTS_SUFFIX)) and p.name not in listed)
            or p.name.endswith(".tar" + TMP_SUFFIX)
        )
    )


def inconsistencies(manifest: Manifest, orphans: list[str]) -> list[str]:
    """Where the manifest contradicts itself: per source, what its record counts against what is listed.

    A complete source lists exactly what its record counts; a running one (an ingest under way or killed: its
    shard list grows after ``manifest.json`` was written) at least that.
    """
    found = []
    for name, record in sorted(manifest.sources.items()):
        listed = manifest.select(source=name)
        structures = sum(s.num_samples for s in listed)
        own_orphans = [o for o in orphans if shard_pattern(name).match(o)]
        claimed = (record.get("shards"), record.get("structures"))
        problems = []
        running = record.get("status") == "running" and None not in claimed
        fewer = running and (len(listed) < claimed[0] or structures < claimed[1])
        if fewer or (not running and claimed != (None, None) and claimed != (len(listed), structures)):
            problems.append(
                f"its record counts {claimed[0]} shards with {claimed[1]} structures, but the manifest lists "
                f"{len(listed)} with {structures}"
            )
        if problems and own_orphans:
            problems.append(f"its shard files {', '.join(own_orphans)} are on disk but not listed")
        if problems:
            found.append(
                f"source {name} ({record.get('status')}): {'; '.join(problems)}; re-run its "
                "`atomfm data ingest` with --rebuild"
            )
    return found


def inspect_corpus(corpus: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The corpus report: manifest summary, per-domain stats, sources, and per-shard verification."""
    if is_remote(corpus):
        raise BadInputError(
            "inspect checks a corpus folder (sizes, checksums, orphans); run it where the files are, before "
            "uploading them (the stream reads URLs)",
            path=str(corpus),
        )
    root = Path(corpus)
    manifest = read_manifest(root)
    bad = {}
    for info in manifest.shards:
        problems = shard_problems(root, info, verify=verify)
        if problems:
            bad[info.path] = problems
    sources = {
        name: {k: rec.get(k) for k in ("status", "structures", "shards", "skipped")}
        for name, rec in sorted(manifest.sources.items())
    }
    orphans = orphan_files(root, manifest)
    inconsistent = inconsistencies(manifest, orphans)
    for info in manifest.shards:
        problem = atom_counts_problem(root, info, verify=verify)
        if problem is not None:
            inconsistent.append(
                f"shard {info.path}: {problem}; re-run source {info.source}'s `atomfm data ingest` "
                "(it writes the shard and its atom counts again)"
            )
    return {
        "corpus": str(root),
        "manifest_version": manifest.version,
        "summary": manifest.summary(),
        "domains": domain_stats(manifest),
        "sources": sources,
        "verification": {
            "checks": "size, sha256, full read" if verify else "presence and size",
            "shards": len(manifest.shards),
            "bad": bad,
            "orphans": orphans,
            "inconsistent": inconsistent,
        },
    }


def _size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def format_report(report: dict[str, Any]) -> str:
    """The report as the table ``atomfm data inspect`` prints."""
    summary, domains = report["summary"], report["domains"]
    total_bytes = sum(d["bytes"] for d in domains.values())
    lines = [
        f"corpus {report['corpus']}: {summary['num_structures']:,} structures, {summary['num_atoms']:,} atoms, "
        f"{summary['num_shards']} shards ({_size(total_bytes)}), {len(report['sources'])} sources",
        "",
    ]
    header = (
        f"{'domain':<10} {'structures':>10} {'atoms':>12} {'mean':>7} {'max':>6} {'train':>9} {'val':>8} "
        f"{'test':>8} {'energy':>7} {'forces':>7} {'stress':>7} {'shards':>6}"
    )
    lines += [header, "-" * len(header)]
    for name, d in domains.items():
        cov = d["label_coverage"]
        lines.append(
            f"{name:<10} {d['structures']:>10,} {d['atoms']:>12,} {d['mean_atoms']:>7.1f} {d['max_atoms']:>6} "
            f"{d['splits'].get('train', 0):>9,} {d['splits'].get('val', 0):>8,} {d['splits'].get('test', 0):>8,} "
            f"{cov['energy']:>6.1f}% {cov['forces']:>6.1f}% {cov['stress']:>6.1f}% {d['shards']:>6}"
        )
    lines.append("")
    for name, d in domains.items():
        atoms = max(d["atoms"], 1)
        top = list(d["elements"].items())[:TOP_ELEMENTS]
        rest = len(d["elements"]) - len(top)
        text = ", ".join(f"{el} {100 * n / atoms:.1f}%" for el, n in top) + (
            f" (+{rest} more)" if rest else ""
        )
        lines.append(f"elements  {name:<10} {len(d['elements'])} kinds: {text}")
    for name, d in domains.items():
        lines.append(
            f"theory    {name:<10} " + ", ".join(f"{lvl} {n:,}" for lvl, n in d["levels_of_theory"].items())
        )
    lines.append("")
    if report["manifest_version"] < VERSION:
        lines.append(
            f"manifest  version {report['manifest_version']} (atom counts inline in manifest.json): "
            f"`atomfm data upgrade {report['corpus']}` rewrites it as version {VERSION} (shards unchanged)"
        )
    for name, rec in report["sources"].items():
        skipped = rec.get("skipped") or {}
        text = f"source    {name} ({rec.get('status')}): {rec.get('structures') or 0:,} structures"
        if skipped:
            text += (
                f"; skipped {sum(skipped.values()):,} ("
                + ", ".join(f"{r} {n}" for r, n in skipped.items())
                + ")"
            )
        if rec.get("status") != "complete":
            text += "; ingest interrupted: re-run the same command to resume"
        lines.append(text)
    ver = report["verification"]
    lines.append("")
    if ver["bad"]:
        lines.append(f"verification ({ver['checks']}): {len(ver['bad'])} of {ver['shards']} shards are BAD")
        for path, problems in ver["bad"].items():
            for problem in problems:
                lines.append(f"  BAD {path}: {problem}")
    elif ver["inconsistent"]:
        lines.append(f"verification ({ver['checks']}): the manifest is INCONSISTENT")
    else:
        lines.append(f"verification ({ver['checks']}): all {ver['shards']} shards intact")
    for problem in ver["inconsistent"]:
        lines.append(f"  INCONSISTENT {problem}")
    for name in ver["orphans"]:
        lines.append(f"  orphan {name}: on disk but not in the manifest (left by an interrupted ingest?)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """The `atomfm data inspect` command: 0 if every shard is intact and the manifest consistent, 1 if not, 2 on
    unusable input."""
    try:
        report = inspect_corpus(args.corpus, verify=not args.no_verify)
    except BadInputError as err:
        print(f"atomfm data inspect: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 1 if report["verification"]["bad"] or report["verification"]["inconsistent"] else 0
