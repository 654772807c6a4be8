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


def test_subsets_of_one_split_are_nested_keep_labels_and_their_split(tmp_path, capsys):
    source = tmp_path / "source"
    cells = crystals(24)
    ingest_structures(
        cells, source, source="cells", seed=3, split_fractions=(0.6, 0.2, 0.2), shard_size=4, progress=False
    )
    train = {s.key: s for s in read_split([str(source)], "train")}
    subsets = {}
    for n in (3, len(train) - 1):
        out = tmp_path / f"n{n}"
        assert atomfm(["data", "subset", str(source), "--structures", str(n), "--out", str(out)]) == 0
        subsets[n] = {s.key: s for s in read_split([str(out)], "train")}
        assert len(subsets[n]) == n and not _maybe(out, "val") and not _maybe(out, "test")
    small, large = subsets.values()
    assert set(small) <= set(large)
    for key, s in large.items():
        assert s.energy == train[key].energy and (s.forces == train[key].forces).all()
    assert atomfm(["data", "subset", str(source), "--structures", "999", "--out", str(tmp_path / "x")]) == 2
    assert "--structures" in capsys.readouterr().err and not (tmp_path / "x").exists()
