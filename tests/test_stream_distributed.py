"""2 ranks × 2 worker processes over one epoch: every sample exactly once (real processes, gloo)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from stream_corpus import crystals, molecules, protein_frames, write_corpus

from data_pipeline.stream import StreamConfig, StructureStream

WORLD_SIZE = 2

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpus folders: molecules in 10 shards (split by shard over 4 readers); crystals in 2 shards and the
    peptide in 1 (fewer shards than readers: split by sample). Returns the folders and every key."""
    root = tmp_path_factory.mktemp("corpora")
    mols, others = molecules(60), crystals(14) + protein_frames(3)
    write_corpus(root / "molecules", mols, shard_size=6)
    write_corpus(root / "others", others, shard_size=8)
    return [str(root / "molecules"), str(root / "others")], [s.key for s in mols + others]


def _config(folders: list[str]) -> StreamConfig:
    return StreamConfig(
        corpus=folders, repeat=False, num_workers=2, max_atoms=200, cutoff=4.0, shuffle_buffer=8, seed=11
    )


def _rank_main(rank: int, init_file: str, folders: list[str], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        stream = StructureStream(_config(folders))  # rank and world size from torch.distributed
        report = {
            "rank": stream.rank,
            "world_size": stream.world_size,
            "keys": [k for batch in stream for k in batch.key],
            "planned": stream.structures_per_epoch(),
        }
        gathered: list = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, report)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_two_ranks_two_workers_deliver_every_sample_exactly_once(corpora, tmp_path):
    folders, keys = corpora
    out = tmp_path / "keys.json"
    mp.start_processes(
        _rank_main,
        args=(str(tmp_path / "rendezvous"), folders, str(out)),
        nprocs=WORLD_SIZE,
        start_method="fork",  # real processes, without re-importing torch in each
    )
    reports = json.loads(out.read_text())
    assert [(r["rank"], r["world_size"]) for r in reports] == [(0, 2), (1, 2)]
    delivered = Counter(k for r in reports for k in r["keys"])
    assert delivered == Counter(keys), "every sample exactly once over ranks and workers"
    for r in reports:
        assert len(r["keys"]) == r["planned"] > 0
        assert any(k.startswith("emt") for k in r["keys"]) and any(k.startswith("g2/") for k in r["keys"])
    explicit = [
        [k for batch in StructureStream(_config(folders), rank, WORLD_SIZE) for k in batch.key]
        for rank in range(WORLD_SIZE)
    ]
    assert explicit == [r["keys"] for r in reports], "explicit rank/world_size give the same streams"
