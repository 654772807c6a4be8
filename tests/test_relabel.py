"""`atomfm data relabel`: a corpus's structures at another level of theory, each keeping its split."""

from __future__ import annotations

from dataclasses import replace

from stream_corpus import crystals

from data_pipeline.corpus_reader import read_split
from data_pipeline.ingest import ingest_structures
from launch.cli import main as atomfm


def test_relabelled_structures_keep_their_keys_and_splits(tmp_path):
    source = tmp_path / "source"
    cells = [replace(s, level_of_theory="pbe") for s in crystals(12)]
    ingest_structures(
        cells, source, source="cells", seed=3, split_fractions=(0.6, 0.2, 0.2), shard_size=4, progress=False
    )
    out = tmp_path / "relabelled"
    assert (
        atomfm(
            [
                "data",
                "relabel",
                str(source),
                "--label",
                "emt",
                "--out",
                str(out),
                "--workers",
                "0",
                "--max-groups",
                "3",
            ]
        )
        == 0
    )
    before = {s.key: s for split in ("train", "val", "test") for s in _maybe(source, split)}
    after = [s for split in ("train", "val", "test") for s in _maybe(out, split)]
    groups = {s.group_id for s in after}
    assert len(groups) == 3 and len(after) == sum(s.group_id in groups for s in before.values())
    for s in after:
        original = before[s.key]
        assert s.level_of_theory == "emt" and original.level_of_theory == "pbe"
        assert s.split == original.split  # the source corpus's seed and fractions, read from its manifest
        assert abs(s.energy - original.energy) < 1e-6  # EMT labels, the same method the cells were made with


def _maybe(corpus, split):
    try:
        return list(read_split([str(corpus)], split))
    except Exception:
        return []
