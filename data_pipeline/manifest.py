"""`manifest.json`: what every shard of a corpus holds, readable before a byte of a shard is read.

Per shard: path (relative to the corpus folder), domain, split, source, sample and atom counts (also per
sample, for packing by atoms), element histogram, levels of theory, label coverage, bytes and sha256.
Per source (one ``atomfm data ingest`` run or one demo part): the options it ran with and what it skipped.
The corpus totals are derived from the shards, never stored twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.atomic_files import write_text_atomic
from data_pipeline.config_mapping import from_mapping
from data_pipeline.schema import BadInputError

MANIFEST_NAME = "manifest.json"
FORMAT = "atomfm-corpus"
VERSION = 1


@dataclass
class ShardInfo:
    """One shard's entry in the manifest."""

    path: str
    domain: str
    split: str
    source: str
    num_samples: int
    num_atoms: int
    natoms: list[int]
    elements: dict[str, int]
    levels_of_theory: dict[str, int]
    labels: dict[str, int]  # structures carrying energy / forces / stress
    bytes: int
    sha256: str

    @classmethod
    def from_dict(cls, d: Any, *, source: str | None = None, prefix: str = "") -> ShardInfo:
        """From a manifest entry: every field present and of its type, the counts consistent."""
        info = from_mapping(cls, d, source=source, prefix=prefix)
        where = f"{prefix}." if prefix else ""
        for name in ("num_samples", "num_atoms", "bytes"):
            if getattr(info, name) < 0:
                raise BadInputError(f"negative count {getattr(info, name)}", path=source, field=where + name)
        if len(info.natoms) != info.num_samples or sum(info.natoms) != info.num_atoms:
            raise BadInputError(
                f"{len(info.natoms)} per-sample atom counts summing to {sum(info.natoms)}, but num_samples "
                f"{info.num_samples} and num_atoms {info.num_atoms}",
                path=source,
                field=where + "natoms",
            )
        return info


@dataclass
class Manifest:
    """All shards of one corpus folder, plus per-source ingest records."""

    shards: list[ShardInfo] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def select(
        self, *, domain: str | None = None, split: str | None = None, source: str | None = None
    ) -> list[ShardInfo]:
        """Shards matching every given filter, in manifest order."""
        return [
            s
            for s in self.shards
            if (domain is None or s.domain == domain)
            and (split is None or s.split == split)
            and (source is None or s.source == source)
        ]

    def summary(self) -> dict[str, Any]:
        """Corpus totals derived from the shard entries."""
        domains: dict[str, Counter] = {}
        elements: Counter = Counter()
        levels: Counter = Counter()
        labels: Counter = Counter()
        for s in self.shards:
            d = domains.setdefault(s.domain, Counter())
            d["structures"] += s.num_samples
            d["atoms"] += s.num_atoms
            d[f"split.{s.split}"] += s.num_samples
            elements.update(s.elements)
            levels.update(s.levels_of_theory)
            labels.update(s.labels)
        splits: Counter = Counter()
        for s in self.shards:
            splits[s.split] += s.num_samples
        skipped: Counter = Counter()
        for rec in self.sources.values():
            skipped.update(rec.get("skipped", {}))
        return {
            "num_shards": len(self.shards),
            "num_structures": sum(s.num_samples for s in self.shards),
            "num_atoms": sum(s.num_atoms for s in self.shards),
            "domains": {k: dict(v) for k, v in sorted(domains.items())},
            "splits": dict(sorted(splits.items())),
            "elements": dict(sorted(elements.items(), key=lambda kv: -kv[1])),
            "levels_of_theory": dict(sorted(levels.items())),
            "labels": dict(labels),
            "skipped": dict(skipped),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "corpus": self.summary(),
            "sources": self.sources,
            "shards": [asdict(s) for s in self.shards],
        }


def manifest_path(corpus: str | Path) -> Path:
    return Path(corpus) / MANIFEST_NAME


def read_manifest(corpus: str | Path) -> Manifest:
    """Read ``corpus/manifest.json``; a missing or damaged manifest is a :class:`BadInputError` naming it."""
    path = manifest_path(corpus)
    if not path.is_file():
        raise BadInputError(
            "no manifest.json: is this a corpus folder written by `atomfm data ingest`?", path=str(path)
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise BadInputError(f"unreadable manifest ({err})", path=str(path)) from None
    if not isinstance(raw, dict):
        raise BadInputError(f"expected a JSON object, got a {type(raw).__name__}", path=str(path))
    if raw.get("format") != FORMAT:
        raise BadInputError(
            f"not an atomfm corpus manifest (format={raw.get('format')!r})", path=str(path), field="format"
        )
    entries, sources = raw.get("shards", []), raw.get("sources", {})
    if not isinstance(entries, list):
        raise BadInputError(
            f"expected a list, got a {type(entries).__name__}", path=str(path), field="shards"
        )
    if not isinstance(sources, dict) or not all(isinstance(r, dict) for r in sources.values()):
        raise BadInputError("expected {source name: record object}", path=str(path), field="sources")
    shards = [ShardInfo.from_dict(d, source=str(path), prefix=f"shards[{i}]") for i, d in enumerate(entries)]
    return Manifest(shards=shards, sources=sources)


def write_manifest(corpus: str | Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (temporary file, fsync, rename)."""
    return write_text_atomic(manifest_path(corpus), json.dumps(manifest.to_dict(), indent=1))
