"""Batches cross from DataLoader workers as one pickled message, tensors by value (data_pipeline/wire.py)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from stream_corpus import crystals, molecules, write_corpus

from data_pipeline.stream import StreamConfig, StructureStream
from data_pipeline.wire import Wire, from_wire, to_wire


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, molecules(24) + crystals(12), shard_size=6)
    return folder


def _stream(corpus, workers: int) -> StructureStream:
    return StructureStream(
        StreamConfig(
            corpus=[str(corpus)],
            cutoff=5.0,
            num_workers=workers,
            shuffle_buffer=8,
            repeat=False,
            max_atoms=24,
        )
    )


def _assert_same_batch(a, b) -> None:
    assert sorted(a.keys()) == sorted(b.keys())
    for name in a.keys():
        x, y = a[name], b[name]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, name
            assert torch.equal(x, y), name
        else:
            assert x == y, name
    assert a.num_graphs == b.num_graphs and torch.equal(a.ptr, b.ptr)
    assert a.to_data_list()[-1].num_nodes == b.to_data_list()[-1].num_nodes


def test_a_batch_survives_the_trip_with_every_field_dtype_and_value(corpus):
    batch = next(iter(_stream(corpus, 0)))
    sent = to_wire((batch, {"report": 3}))
    assert isinstance(sent, Wire) and isinstance(sent.payload, bytes)
    back, report = from_wire(sent)
    assert report == {"report": 3}
    _assert_same_batch(batch, back)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only numpy buffer would warn here
        back.pos.add_(1.0)  # the trainer's corruption tasks write batches in place
    assert torch.equal(back.pos, batch.pos + 1.0)


def test_tensors_numpy_cannot_hold_and_other_objects_pass_too():
    item = {
        "bf16": torch.arange(4, dtype=torch.bfloat16),
        "view": torch.arange(12.0).reshape(3, 4).t(),
        "n": 7,
    }
    back = from_wire(to_wire(item))
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], item["bf16"])
    assert torch.equal(back["view"], item["view"]) and back["n"] == 7
    assert from_wire("not sent by a worker") == "not sent by a worker"


def test_worker_processes_deliver_what_the_main_process_reads(corpus):
    in_process = list(_stream(corpus, 0))
    from_worker = list(_stream(corpus, 1))  # one reader either way: the same plan, the same batches
    assert len(in_process) == len(from_worker) >= 4
    for a, b in zip(in_process, from_worker, strict=True):
        _assert_same_batch(a, b)
    # each tensor owns its memory (not a view into the message): torch.save takes a batch as it is
    buffer = io.BytesIO()
    torch.save([b.to_dict() for b in from_worker], buffer)
