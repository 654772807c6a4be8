"""Hostile input and damaged state where a real process matters: a crash by signal, a hang, a signal that must
stop a run, a killed run that must resume from an intact checkpoint. Every child runs under a timeout."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import child_environment, run, train_config
from stream_corpus import molecules, write_corpus

from data_pipeline.schema import Structure
from data_pipeline.stream import StreamConfig, StreamStarvedError, StructureStream
from train.trainer import endless

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter at the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=child_environment(ROOT) | env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Geometries whose cell grid vesin collapses (SIGFPE) or crawls through: a stray atom far along one axis, a
# sparse sheet, a long thin periodic cell, a slab with one atom far above it.
NEIGHBOUR_LISTS = """
import numpy as np
from data_pipeline.neighbours import radius_graph_pbc
cases = {
    "stray_atom_1e6": (np.array([[0, 0, 0], [1, 0, 0], [1e6, 0, 0]]), None, [False] * 3),
    "stray_atom_1e30": (np.array([[0, 0, 0], [1, 0, 0], [1e30, 0, 0]]), None, [False] * 3),
    "sparse_sheet_2000": (np.array([[0, 0, 0], [1, 0, 0], [2e3, 0, 0], [0, 2e3, 0], [2e3, 2e3, 0]]), None, [False] * 3),
    "thin_cell_1e6": (np.array([[0, 0, 0], [1.0, 0, 0]]), np.diag([1e6, 3.0, 3.0]), [True] * 3),
    "slab_atom_1e6_above": (np.array([[0, 0, 0], [1, 1, 0], [1, 1, 1e6]]), np.diag([3, 3, 20]), [True, True, False]),
}
for name, (pos, cell, pbc) in cases.items():
    try:
        edges, _ = radius_graph_pbc(pos, cell, pbc, 1.5)
        print(name, "edges", edges.shape[1], flush=True)
    except ValueError as err:
        print(name, "refused", err, flush=True)
"""


def test_neighbour_lists_of_extreme_extents_never_crash_the_process():
    result = python(NEIGHBOUR_LISTS)
    assert result.returncode == 0, f"exit {result.returncode} (negative: killed by signal)\n{result.stderr}"
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["stray_atom_1e6"] == "edges 2" and lines["stray_atom_1e30"] == "edges 2"
    assert lines["sparse_sheet_2000"] == "edges 2"
    assert lines["thin_cell_1e6"].startswith("refused") and "wrong unit" in lines["thin_cell_1e6"]
    assert lines["slab_atom_1e6_above"].startswith("refused")


def test_a_structure_a_million_angstrom_wide_in_a_shard_is_skipped_and_counted_by_the_stream(tmp_path):
    """Shards written before extents were checked: a stream worker process skips and counts the record."""
    good = molecules(6)
    stray = Structure(
        key="stray/0",
        domain="molecule",
        atomic_numbers=np.array([8, 1, 1], dtype=np.uint8),
        positions=np.array([[0, 0, 0], [0, 0, 1], [1e6, 0, 0]], dtype=np.float32),
        split="train",
    )
    write_corpus(tmp_path, [*good, stray], shard_size=4)
    stream = StructureStream(
        StreamConfig(corpus=str(tmp_path), repeat=False, num_workers=1, max_atoms=64, cutoff=4.0)
    )
    keys = [key for batch in stream for key in batch.key]
    assert sorted(keys) == sorted(s.key for s in good)
    assert stream.stats.skipped_samples == {"undecodable": 1}
    assert any("stray/0" in where for where in stream.stats.skipped_keys)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("repeat", [True, False])
def test_a_stream_that_skips_every_structure_says_so_and_stops(repeat, tmp_path):
    write_corpus(tmp_path, [s for s in molecules(40) if s.num_atoms > 3][:6], shard_size=3)
    cfg = StreamConfig(
        corpus=str(tmp_path), repeat=repeat, num_workers=0, max_atoms=3, skip_oversize=True, cutoff=4.0
    )
    batches = endless(StructureStream(cfg))
    with pytest.raises(StreamStarvedError) as info:
        next(batches)
    assert "skipped every structure" in str(info.value) and "data.max_atoms=3" in str(info.value)


# The stream of this run never delivers and never ends, as one stuck on a dead file system would.
STUCK_RUN = """
import sys, time
from data_pipeline import stream
def stuck(self):
    print("waiting for data", flush=True)
    while True:
        time.sleep(0.05)
    yield
stream.StructureStream.__iter__ = stuck
from launch.cli import main
sys.exit(main(["train", "--config", sys.argv[1], "--no-wandb"]))
"""


@pytest.mark.timeout(180)
def test_sigterm_stops_a_run_stuck_outside_a_step(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, molecules(6), shard_size=3)
    config = train_config(corpus, tmp_path / "run", run={"stop_wait_s": 1.0})
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_RUN, str(config)],
        cwd=ROOT,
        env=child_environment(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "waiting for data" in line:
                break
        assert proc.poll() is None, "".join(seen)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "no batch came within run.stop_wait_s=1 s while waiting for data at step 0" in output, output
    assert "Traceback" not in output


# `atomfm data ...` alone (the other command groups import the whole model).
DATA_CLI = (
    "import argparse, sys; from data_pipeline.cli import register; p = argparse.ArgumentParser(prog='atomfm'); "
    "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


def limit_file_size(limit: int) -> None:
    """In the child: files may not grow past ``limit`` bytes, and the write fails (EFBIG) instead of a signal."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_ingest_on_a_file_system_that_refuses_to_grow_a_shard_names_it_and_keeps_the_manifest(tmp_path):
    from ase.build import molecule
    from ase.io import write

    from data_pipeline.inspect_corpus import inspect_corpus
    from data_pipeline.manifest import read_manifest

    inputs = tmp_path / "ethanol.extxyz"
    write(inputs, [molecule("CH3CH2OH")] * 60)
    out = tmp_path / "corpus"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            DATA_CLI,
            "data",
            "ingest",
            str(inputs),
            "--out",
            str(out),
            "--shard-size",
            "40",
        ],
        cwd=ROOT,
        env=child_environment(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: limit_file_size(40_000),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "File too large" in result.stderr
    assert str(out / "ethanol-molecule-train-000000.tar") in result.stderr
    assert read_manifest(out).shards == [] and not inspect_corpus(out)["verification"]["bad"]


@pytest.mark.timeout(240)
def test_a_run_killed_and_then_damaged_resumes_from_its_newest_intact_checkpoint(tmp_path, capsys):
    from model.checkpoint_layout import list_checkpoints

    corpus = tmp_path / "corpus"
    write_corpus(corpus, molecules(12), shard_size=4)
    config = train_config(corpus, tmp_path / "run", run={"max_steps": 10_000, "keep_last": 3})
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", "--config", str(config), "--no-wandb"],
        cwd=ROOT,
        env=child_environment(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while len(list_checkpoints(tmp_path / "run")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no two checkpoints written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    *_, older, latest = list_checkpoints(tmp_path / "run")
    (latest / "rank_00000.pt").write_bytes((latest / "rank_00000.pt").read_bytes()[:100])
    older_step = int(older.name.split("_")[1])
    capsys.readouterr()
    assert run("train", "--config", config, f"run.max_steps={older_step + 2}") == 0
    out = capsys.readouterr().out
    assert f"skipped damaged checkpoint {latest.name} (rank_00000.pt has 100 bytes" in out
    assert f"resumed from {older} at step {older_step}" in out


@pytest.mark.timeout(180)
def test_a_second_training_of_a_folder_a_live_run_writes_is_refused_and_a_killed_run_frees_it(
    tmp_path, capsys
):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, molecules(12), shard_size=4)
    config = train_config(corpus, tmp_path / "run", run={"max_steps": 10_000, "checkpoint_every": 10_000})
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", "--config", str(config), "--no-wandb"],
        cwd=ROOT,
        env=child_environment(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "the first run logged no step"
            time.sleep(0.05)
        capsys.readouterr()
        assert run("train", "--config", config, "run.max_steps=2") == 2
        err = capsys.readouterr().err
        assert "another training is writing this run.out_dir" in err and f"process {proc.pid}" in err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert run("train", "--config", config, "run.max_steps=2", "run.checkpoint_every=1") == 0
