"""A corpus behind a URL: the stream reads its manifest, shard lists, atom counts and shards over HTTP (a real
server on 127.0.0.1, real webdataset reading through curl) and through a ``pipe:`` command, and delivers the
same batches as from the folder; a stream state saved on the folder resumes over HTTP."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from stream_corpus import crystals, molecules, write_corpus

from data_pipeline.corpus_reader import read_split
from data_pipeline.inspect_corpus import inspect_corpus
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import BadInputError
from data_pipeline.stream import StreamConfig, StructureStream


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A two-domain corpus in ``root/corpus``, and the URL of ``root`` on a local HTTP server."""
    root = tmp_path_factory.mktemp("served")
    write_corpus(root / "corpus", molecules(16) + crystals(8), shard_size=4)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root / "corpus", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _config(corpus: str, **options) -> StreamConfig:
    return StreamConfig(corpus=corpus, cutoff=4.0, max_atoms=48, shuffle_buffer=8, repeat=False, **options)


def _keys(batches) -> list[list[str]]:
    return [list(b.key) for b in batches]


def test_a_stream_over_http_delivers_the_folders_batches(served):
    folder, base = served
    url = f"{base}/corpus"
    local = _keys(StructureStream(_config(str(folder), num_workers=0)))
    assert sum(map(len, local)) == 24
    assert _keys(StructureStream(_config(url, num_workers=0))) == local
    assert _keys(StructureStream(_config(url, num_workers=2), rank=0, world_size=1)) == _keys(
        StructureStream(_config(str(folder), num_workers=2), rank=0, world_size=1)
    )
    assert [s.key for s in read_split([url], "train")] == [s.key for s in read_split([str(folder)], "train")]


def test_a_state_saved_on_the_folder_resumes_over_http(served):
    folder, base = served
    stream = StructureStream(_config(str(folder), num_workers=0))
    batches = iter(stream)
    for _ in range(2):
        next(batches)
    state = stream.state_dict()
    rest = _keys(batches)
    resumed = StructureStream(_config(f"{base}/corpus", num_workers=0))
    resumed.load_state_dict(state)
    assert rest and _keys(resumed) == rest


def test_a_pipe_corpus_runs_its_command_for_every_file(served):
    folder, _ = served
    pipe = f"pipe:cat {folder}/{{}}"
    assert read_manifest(pipe).summary() == read_manifest(folder).summary()
    assert _keys(StructureStream(_config(pipe, num_workers=0))) == _keys(
        StructureStream(_config(str(folder), num_workers=0))
    )


def test_a_url_without_a_corpus_a_pipe_without_a_slot_and_inspect_of_a_url_are_named(served):
    _, base = served
    with pytest.raises(BadInputError, match=rf"file {base}/nothing/manifest.json: no manifest.json"):
        StructureStream(_config(f"{base}/nothing", num_workers=0))
    with pytest.raises(BadInputError, match=r"pipe:cat x.*with \{\} where each file name goes"):
        StructureStream(_config("pipe:cat x", num_workers=0))
    with pytest.raises(BadInputError, match="inspect checks a corpus folder"):
        inspect_corpus(f"{base}/corpus")


def test_a_missing_atom_counts_file_behind_a_url_is_named_before_reading(served):
    folder, base = served
    copy = Path(shutil.copytree(folder, folder.parent / "no_counts"))
    counts = sorted(copy.glob("*.natoms.npy"))[0]
    counts.unlink()
    with pytest.raises(BadInputError, match=rf"file {base}/no_counts/{counts.name}: missing"):
        StructureStream(_config(f"{base}/no_counts", num_workers=0))
