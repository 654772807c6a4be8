"""Hostile input to `atomfm data inspect`: a manifest of the wrong JSON type or with wrongly typed fields is
refused with exit code 2 naming the file and field (a shard list's entries by line); a damaged shard, a missing
or truncated atom-counts file, or a manifest that contradicts itself is reported (exit code 1), never "all
intact". Version 1 manifests (counts inline) are checked as strictly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile import assert_refused, atomfm, run
from stream_corpus import as_version_1
from test_hostile_ingest import xyz

SHARD_LIST = "waters.shards.jsonl"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """A corpus of one source, 'waters', in three train shards."""
    folder = tmp_path_factory.mktemp("ingested")
    inputs = folder / "waters.extxyz"
    inputs.write_text("".join(xyz(f"energy={-i}.0") for i in range(9)))
    args = ["data", "ingest", str(inputs), "--out", str(folder / "corpus"), "--shard-size", "3"]
    assert run(*args, "--split-fractions", "1,0,0") == 0
    return folder / "corpus"


@pytest.fixture
def corpus(ingested, tmp_path) -> Path:
    return Path(shutil.copytree(ingested, tmp_path / "corpus"))


def edit_manifest(corpus: Path, change) -> Path:
    path = corpus / "manifest.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(change(raw)))
    return path


def edit_first_entry(corpus: Path, change) -> Path:
    """Replace the first line of the source's shard list with ``change(line)`` (a JSON value)."""
    path = corpus / SHARD_LIST
    first, *rest = path.read_text().split("\n")
    path.write_text("\n".join([json.dumps(change(json.loads(first))), *rest]))
    return path


def set_shard_field(name: str, value):
    def change(line):
        line["shard"][name] = value
        return line

    return change


def drop_shard_field(name: str):
    def change(line):
        del line["shard"][name]
        return line

    return change


BAD_MANIFESTS = {
    "a_list": (lambda raw: [raw], "JSON object"),
    "a_string": (lambda raw: "manifest", "JSON object"),
    "a_number": (lambda raw: 3, "JSON object"),
    "format_wrong": (lambda raw: {**raw, "format": "webdataset"}, "field 'format'"),
    "version_from_the_future": (lambda raw: {**raw, "version": 9}, "field 'version'"),
    "shard_lists_a_list": (
        lambda raw: {**raw, "shard_lists": ["waters.shards.jsonl"]},
        "field 'shard_lists'",
    ),
    "sources_a_list": (lambda raw: {**raw, "sources": ["waters"]}, "field 'sources'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_refused_naming_the_field(case, corpus, capsys):
    change, named = BAD_MANIFESTS[case]
    path = edit_manifest(corpus, change)
    assert_refused(atomfm(capsys, "data", "inspect", corpus), path, named)


BAD_ENTRIES = {
    "a_string": (lambda line: "waters-molecule-train-000000.tar", "field 'line 1'"),
    "without_sha256": (drop_shard_field("sha256"), "line 1.shard.sha256"),
    "num_samples_a_string": (set_shard_field("num_samples", "three"), "line 1.shard.num_samples"),
    "num_samples_a_float": (set_shard_field("num_samples", 3.5), "line 1.shard.num_samples"),
    "bytes_negative": (set_shard_field("bytes", -1), "line 1.shard.bytes"),
    "elements_a_list": (set_shard_field("elements", ["H", "O"]), "line 1.shard.elements"),
    "unknown_field": (set_shard_field("colour", "blue"), "colour"),
    "natoms_file_a_string": (set_shard_field("natoms_file", "counts.npy"), "line 1.shard.natoms_file"),
    "without_natoms_file": (drop_shard_field("natoms_file"), "line 1.shard.natoms_file"),
    "counts_inline": (set_shard_field("natoms", [3, 3, 3]), "line 1.shard.natoms"),
    "another_source": (set_shard_field("source", "ice"), "line 1.shard.source"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_a_shard_list_entry_of_the_wrong_shape_is_refused_naming_its_line_and_field(case, corpus, capsys):
    change, named = BAD_ENTRIES[case]
    path = edit_first_entry(corpus, change)
    assert_refused(atomfm(capsys, "data", "inspect", corpus), path, named)


def set_version_1_field(name: str, value):
    def change(raw):
        raw["shards"][0][name] = value
        return raw

    return change


BAD_VERSION_1 = {
    "shards_a_mapping": (lambda raw: {**raw, "shards": {"a": 1}}, "field 'shards'"),
    "natoms_too_short": (set_version_1_field("natoms", [3]), "shards[0].natoms"),
    "natoms_words": (set_version_1_field("natoms", ["three", "3", "3"]), "shards[0].natoms[0]"),
    "num_samples_a_string": (set_version_1_field("num_samples", "three"), "shards[0].num_samples"),
}


@pytest.mark.parametrize("case", sorted(BAD_VERSION_1))
def test_a_version_1_manifest_of_the_wrong_shape_is_refused_naming_the_field(case, corpus, capsys):
    change, named = BAD_VERSION_1[case]
    path = edit_manifest(as_version_1(corpus), change)
    assert_refused(atomfm(capsys, "data", "inspect", corpus), path, named)


def test_a_shard_list_cut_mid_line_by_a_crash_lists_its_complete_lines(corpus, capsys):
    path = corpus / SHARD_LIST
    lines = path.read_text().split("\n")
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    corpus_json = json.loads((corpus / "manifest.json").read_text())
    corpus_json["sources"]["waters"].update(status="running", shards=0, structures=0)  # as its run started
    (corpus / "manifest.json").write_text(json.dumps(corpus_json))
    outcome = atomfm(capsys, "data", "inspect", corpus)
    assert outcome.code == 0 and "all 2 shards intact" in outcome.out, outcome.out
    assert "orphan waters-molecule-train-000002.tar" in outcome.out


@pytest.mark.parametrize(
    "damage, problem",
    [(Path.unlink, "is missing"), (lambda p: p.write_bytes(p.read_bytes()[:100]), "is truncated or damaged")],
    ids=["missing", "truncated"],
)
def test_a_missing_or_truncated_atom_counts_file_makes_the_corpus_inconsistent(
    damage, problem, corpus, capsys
):
    counts = corpus / "waters-molecule-train-000001.natoms.npy"
    damage(counts)
    outcome = atomfm(capsys, "data", "inspect", corpus, "--no-verify")
    assert outcome.code == 1 and "the manifest is INCONSISTENT" in outcome.out, outcome.out
    assert (
        f"INCONSISTENT shard waters-molecule-train-000001.tar: its atom counts file {counts.name} {problem}"
        in (outcome.out)
    )


def test_atom_counts_that_disagree_with_their_entry_are_inconsistent(corpus, capsys):
    import numpy as np

    first, second = (corpus / f"waters-molecule-train-00000{i}.natoms.npy" for i in (0, 1))
    np.save(second, np.array([3, 3, 4], dtype=np.uint16))  # same size, other counts
    assert second.stat().st_size == first.stat().st_size
    outcome = atomfm(capsys, "data", "inspect", corpus)
    assert (
        outcome.code == 1 and f"its atom counts file {second.name} is wrong: checksum mismatch" in outcome.out
    )


@pytest.mark.parametrize(
    "content",
    [b"", b'{"format": "atomfm-corpus", "shards": [', bytes(range(256))],
    ids=["empty", "cut", "binary"],
)
def test_an_unreadable_manifest_is_named(content, corpus, capsys):
    (corpus / "manifest.json").write_bytes(content)
    assert_refused(atomfm(capsys, "data", "inspect", corpus), corpus / "manifest.json", "unreadable")


def test_a_folder_without_a_manifest_is_named(tmp_path, capsys):
    assert_refused(atomfm(capsys, "data", "inspect", tmp_path), tmp_path / "manifest.json")


def test_a_training_run_on_a_manifest_of_the_wrong_shape_is_refused_naming_it(corpus, tmp_path, capsys):
    from hostile import train_config

    path = edit_first_entry(corpus, set_shard_field("natoms_file", "many"))
    config = train_config(corpus, tmp_path / "run")
    assert_refused(atomfm(capsys, "train", "--config", config), path, "line 1.shard.natoms_file")


def damage_first_shard(corpus: Path, damage) -> str:
    name = "waters-molecule-train-000000.tar"
    damage(corpus / name)
    return name


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


SHARD_DAMAGE = {
    "missing": (Path.unlink, "missing"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:700]), "size mismatch"),
    "bit_flipped": (flip_byte, "checksum mismatch"),
    "emptied": (lambda p: p.write_bytes(b""), "size mismatch"),
}


@pytest.mark.parametrize("case", sorted(SHARD_DAMAGE))
def test_a_damaged_shard_is_reported_bad(case, corpus, capsys):
    damage, problem = SHARD_DAMAGE[case]
    name = damage_first_shard(corpus, damage)
    outcome = atomfm(capsys, "data", "inspect", corpus)
    assert outcome.code == 1 and f"BAD {name}: {problem}" in outcome.out, outcome.out


def test_a_manifest_listing_no_shards_while_its_source_says_complete_is_inconsistent(corpus, capsys):
    (corpus / SHARD_LIST).write_text("")
    outcome = atomfm(capsys, "data", "inspect", corpus)
    assert outcome.code == 1, outcome.out
    assert "all 0 shards intact" not in outcome.out and "INCONSISTENT source waters (complete)" in outcome.out
    assert "counts 3 shards with 9 structures, but the manifest lists 0 with 0" in outcome.out
    assert "waters-molecule-train-000000.tar" in outcome.out


def test_a_source_record_counting_other_structures_is_inconsistent(corpus, capsys):
    def change(raw):
        raw["sources"]["waters"]["structures"] = 12
        return raw

    edit_manifest(corpus, change)
    outcome = atomfm(capsys, "data", "inspect", corpus)
    assert outcome.code == 1 and "counts 3 shards with 12 structures" in outcome.out, outcome.out
