"""Whole-split reads of a corpus: every source's records, or one source's."""

from __future__ import annotations

import pytest
from ase.build import molecule

from data_pipeline.corpus_reader import read_split
from data_pipeline.ingest import ingest_structures
from data_pipeline.schema import BadInputError, Structure


def molecules(prefix: str, names: list[str]) -> list[Structure]:
    out = []
    for name in names:
        atoms = molecule(name)
        out.append(
            Structure(
                key=f"{prefix}/{name}",
                domain="molecule",
                atomic_numbers=atoms.numbers,
                positions=atoms.positions,
                group_id=name,
            )
        )
    return out


def test_read_split_of_one_source(tmp_path):
    everything_train = {"split_fractions": (1.0, 0.0, 0.0), "progress": False}
    ingest_structures(molecules("a", ["H2O", "NH3"]), tmp_path, source="first", **everything_train)
    ingest_structures(molecules("b", ["CH4", "C6H6", "CO2"]), tmp_path, source="second", **everything_train)
    assert {s.key for s in read_split([str(tmp_path)], "train", source="second")} == {
        "b/CH4",
        "b/C6H6",
        "b/CO2",
    }
    assert len(list(read_split([str(tmp_path)], "train"))) == 5
    with pytest.raises(BadInputError, match="no shards of split 'train' from source 'third'"):
        list(read_split([str(tmp_path)], "train", source="third"))
