"""A stream saved by N ranks (or worker counts) resumed on M: every sample of the epoch exactly once over the change."""

from __future__ import annotations

from collections import Counter

import pytest
from stream_corpus import crystals, molecules, write_corpus

from data_pipeline.stream import StreamConfig, StructureStream
from data_pipeline.stream_plan import ReaderSlot


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list[str]]:
    """Molecules in 8 shards (split by shard over few readers, by sample over more) and crystals in 2."""
    folder = tmp_path_factory.mktemp("reshard")
    structures = molecules(32) + crystals(10)
    write_corpus(folder, structures, shard_size=4)
    return str(folder), [s.key for s in structures]


def config(folder: str, workers: int, **settings) -> StreamConfig:
    chosen = dict(max_atoms=40, cutoff=4.0, shuffle_buffer=4, seed=5, repeat=False) | settings
    return StreamConfig(corpus=folder, num_workers=workers, **chosen)


def rest_of_epoch(stream: StructureStream) -> list[str]:
    """Keys of the batches ``stream`` delivers in its current epoch (a rank whose share of an interrupted
    epoch is empty goes on with the next one)."""
    epoch, keys = stream.epoch, []
    for batch in stream:
        if stream.epoch != epoch:
            break
        keys += batch.key
    return keys


def take(streams: list[StructureStream], steps: int) -> list[str]:
    """``steps`` batches from each rank's stream in lock step, as training takes them; their keys."""
    iterators = [iter(s) for s in streams]
    return [key for _ in range(steps) for it in iterators for key in next(it).key]


@pytest.mark.parametrize(
    ("old_world", "old_workers", "new_world", "new_workers", "steps"),
    [(2, 0, 1, 0, 3), (1, 0, 2, 0, 4), (3, 0, 2, 1, 2)],
)
def test_an_epoch_resumed_on_another_layout_delivers_every_sample_once(
    corpus, old_world, old_workers, new_world, new_workers, steps
):
    folder, keys = corpus
    old = [StructureStream(config(folder, old_workers), r, old_world) for r in range(old_world)]
    before = take(old, steps)
    states = [s.state_dict() for s in old]
    new = [StructureStream(config(folder, new_workers), r, new_world) for r in range(new_world)]
    for stream in new:
        stream.load_resharded(states)
    after = [key for stream in new for key in rest_of_epoch(stream)]
    assert before and after
    assert Counter(before + after) == Counter(keys), "a sample lost or delivered twice"


def test_a_batch_split_under_max_edges_is_resharded_after_its_delivered_parts(corpus):
    folder, keys = corpus
    cfg = config(folder, 0, max_edges=60)
    old = [StructureStream(cfg, r, 2) for r in range(2)]
    iterators = [iter(s) for s in old]
    before = []
    for _ in range(12):  # until a rank stops between the parts of a planned batch
        for it in iterators:
            before += next(it).key
        if any(p[1] for s in old for p in s.state_dict()["progress"]):
            break
    states = [s.state_dict() for s in old]
    assert any(samples for state in states for samples in state["partial"]), "no split batch in 12 steps"
    new = StructureStream(cfg, 0, 1)
    new.load_resharded(states)
    assert Counter(before + rest_of_epoch(new)) == Counter(keys)


def test_a_repeating_stream_resumed_on_another_layout_completes_the_epoch_once(corpus):
    """With ``repeat`` the plans run on into the next epoch; the samples of the interrupted epoch that the new
    plans draw are exactly those the old ones had not delivered."""
    folder, keys = corpus
    old = [StructureStream(config(folder, 0, repeat=True), r, 2) for r in range(2)]
    take(old, 3)
    states = [s.state_dict() for s in old]
    new = StructureStream(config(folder, 0, repeat=True), 0, 1)
    new.load_resharded(states)
    assert new.epoch == 0
    mask = new.delivered.mask(0)
    assert 0 < mask.sum() < len(keys)
    from data_pipeline.stream import _sample_plan

    plan = _sample_plan(new.cfg, new.table, new.probabilities, ReaderSlot(0, 1), 0, new.delivered)
    drawn = []
    for refs in plan:
        drawn += [(ref.shard, ref.member) for ref in refs if ref.epoch == 0]
        if any(ref.epoch > 1 for ref in refs):
            break
    offsets = new.delivered.offsets
    delivered = {int(i) for i in mask.nonzero()[0]}
    drawn_ids = [int(offsets[shard] + member) for shard, member in drawn]
    assert len(drawn_ids) == len(set(drawn_ids)) and not delivered & set(drawn_ids)
    assert delivered | set(drawn_ids) == set(range(len(keys)))


def test_a_resharded_state_resumes_exactly_on_the_same_layout(corpus):
    """After a change of layout, the new ranks' own checkpoints resume bit-exactly as before."""
    folder, _ = corpus
    old = [StructureStream(config(folder, 0, repeat=True), r, 2) for r in range(2)]
    take(old, 2)
    states = [s.state_dict() for s in old]
    first = StructureStream(config(folder, 0, repeat=True), 0, 1)
    first.load_resharded(states)
    it = iter(first)
    next(it)
    saved = first.state_dict()
    expected = [next(it).key for _ in range(3)]
    again = StructureStream(config(folder, 0, repeat=True), 0, 1)
    again.load_state_dict(saved)
    resumed = iter(again)
    assert [next(resumed).key for _ in range(3)] == expected


def test_a_changed_setting_besides_the_layout_is_refused(corpus):
    folder, _ = corpus
    old = [StructureStream(config(folder, 0), r, 2) for r in range(2)]
    states = [s.state_dict() for s in old]
    with pytest.raises(ValueError, match="max_atoms"):
        StructureStream(config(folder, 0, max_atoms=50), 0, 1).load_resharded(states)
