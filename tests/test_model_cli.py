"""`atomfm model list` and `atomfm model info`."""

from __future__ import annotations

import json

import torch

from launch.cli import main
from model.atomfm import AtomFM, model_config
from model.sizes import SIZES


def run_json(capsys, *argv: str):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_model_list_counts_every_named_size(capsys):
    rows = run_json(capsys, "model", "list", "--json")
    assert [r["name"] for r in rows] == list(SIZES)
    with torch.device("meta"):
        tiny = AtomFM(model_config("tiny"))
    assert rows[0]["parameters"] == sum(p.numel() for p in tiny.parameters())
    assert rows[-1]["parameters"] >= 1_000_000_000


def test_model_info_estimate_tracks_the_measured_activations(capsys):
    report = run_json(
        capsys,
        "model",
        "info",
        "tiny",
        "--set",
        "num_layers=2",
        "--set",
        "channels=32",
        "--measure",
        "--json",
    )
    assert report["num_layers"] == 2 and report["channels"] == 32
    measured = report["measured_per_1000_atoms"]
    ratio = measured["estimate_same_edges_bytes"] / measured["direct_forces_bytes"]
    assert 0.7 < ratio < 1.4, ratio
    assert measured["conservative_forces_bytes"] > measured["direct_forces_bytes"]
    rows = report["saved_tensors_per_1000_atoms"]["conservative_forces"]
    assert {"forward", "backward"} <= {r["phase"] for r in rows}  # the double backward's graph is itemised
    assert any(r["module"].endswith("attention.message") and "E" in r["shape"].split(" x ") for r in rows)
    wider = run_json(capsys, "model", "info", "tiny", "--set", "lmax=4", "--json")
    assert (
        wider["activation_memory_per_1000_atoms"]["fp32_bytes"]
        > report["activation_memory_per_1000_atoms"]["fp32_bytes"]
    )


def test_model_info_names_an_unknown_size_or_key(capsys):
    assert main(["model", "info", "huge"]) == 2
    assert "'huge'" in capsys.readouterr().err
    assert main(["model", "info", "tiny", "--set", "lmaks=3"]) == 2
    assert "'lmaks'" in capsys.readouterr().err
