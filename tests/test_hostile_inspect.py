"""Hostile input to `atomfm data inspect`: a manifest of the wrong JSON type or with wrongly typed fields is
refused with exit code 2 naming the file and field; a damaged shard or a manifest that contradicts itself is
reported (exit code 1), never "all intact"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile import assert_refused, atomfm, run
from test_hostile_ingest import xyz


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


def set_shard_field(name: str, value):
    def change(raw):
        raw["shards"][0][name] = value
        return raw

    return change


def drop_shard_field(name: str):
    def change(raw):
        del raw["shards"][0][name]
        return raw

    return change


BAD_MANIFESTS = {
    "a_list": (lambda raw: [raw], "JSON object"),
    "a_string": (lambda raw: "manifest", "JSON object"),
    "a_number": (lambda raw: 3, "JSON object"),
    "format_wrong": (lambda raw: {**raw, "format": "webdataset"}, "field 'format'"),
    "shards_a_mapping": (lambda raw: {**raw, "shards": {"a": 1}}, "field 'shards'"),
    "shard_a_string": (lambda raw: {**raw, "shards": ["waters-molecule-train-000000.tar"]}, "shards[0]"),
    "shard_without_sha256": (drop_shard_field("sha256"), "shards[0].sha256"),
    "num_samples_a_string": (set_shard_field("num_samples", "three"), "shards[0].num_samples"),
    "num_samples_a_float": (set_shard_field("num_samples", 3.5), "shards[0].num_samples"),
    "natoms_too_short": (set_shard_field("natoms", [3]), "shards[0].natoms"),
    "natoms_words": (set_shard_field("natoms", ["three", "3", "3"]), "shards[0].natoms[0]"),
    "bytes_negative": (set_shard_field("bytes", -1), "shards[0].bytes"),
    "elements_a_list": (set_shard_field("elements", ["H", "O"]), "shards[0].elements"),
    "unknown_shard_field": (set_shard_field("colour", "blue"), "colour"),
    "sources_a_list": (lambda raw: {**raw, "sources": ["waters"]}, "field 'sources'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_refused_naming_the_field(case, corpus, capsys):
    change, named = BAD_MANIFESTS[case]
    path = edit_manifest(corpus, change)
    assert_refused(atomfm(capsys, "data", "inspect", corpus), path, named)


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

    path = edit_manifest(corpus, set_shard_field("natoms", "many"))
    config = train_config(corpus, tmp_path / "run")
    assert_refused(atomfm(capsys, "train", "--config", config), path, "shards[0].natoms")


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
    edit_manifest(corpus, lambda raw: {**raw, "shards": []})
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
