"""The corpus's key index: which listed shard (and so which source) holds each record key, in SQLite.

Ingest asks it whether a key is already in the corpus instead of reading every shard of the other sources
when it starts. ``keys.sqlite`` lies beside the shards; it is a cache of what the shards hold, kept in step
with the manifest: a shard's keys are committed just before the shard is listed, and :meth:`KeyIndex.sync`
(at the start of every ingest) drops the keys of shards the manifest no longer lists (a rebuilt source, a
crash between the two writes) and reads the keys of listed shards it does not know (a version 1 corpus, a
deleted index) from their tars, once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tarfile
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.atomic_files import writing
from data_pipeline.manifest import Manifest, ShardInfo
from data_pipeline.schema import BadInputError

log = logging.getLogger(__name__)

INDEX_NAME = "keys.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, shard INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_by_shard ON keys (shard);
"""


def shard_keys(corpus: Path, info: ShardInfo) -> list[str]:
    """The record keys a shard holds, read from its JSON members."""
    path = corpus / info.path
    keys = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    keys.append(json.loads(tar.extractfile(member).read())["key"])
    except (OSError, tarfile.TarError, ValueError, KeyError) as err:
        raise BadInputError(
            f"cannot read the keys of this shard of source {info.source!r} ({err}); "
            f"`atomfm data inspect` shows the damage, and re-running {info.source!r}'s ingest repairs it",
            path=str(path),
        ) from None
    return keys


class KeyIndex:
    """Open (or create) ``corpus/keys.sqlite``; close it with :meth:`close` or a ``with`` block."""

    def __init__(self, corpus: str | Path) -> None:
        self.corpus = Path(corpus)
        self.path = self.corpus / INDEX_NAME
        with writing(self.path):
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.executescript(_SCHEMA)

    def sync(self, manifest: Manifest) -> None:
        """Make the index hold exactly the keys of the manifest's listed shards."""
        listed = {s.path: s for s in manifest.shards}
        known = dict(self.db.execute("SELECT name, id FROM shards"))
        stale = [known[name] for name in known if name not in listed]
        missing = [s for name, s in listed.items() if name not in known]
        with writing(self.path):
            if stale:
                log.info("key index: dropping the keys of %d shards no longer listed", len(stale))
                self.db.execute("BEGIN")
                self.db.executemany("DELETE FROM keys WHERE shard = ?", [(i,) for i in stale])
                self.db.executemany("DELETE FROM shards WHERE id = ?", [(i,) for i in stale])
                self.db.execute("COMMIT")
            if missing:
                log.warning(
                    "key index: reading the keys of %d listed shards from their tars (once)", len(missing)
                )
            for info in missing:
                self.add(info, shard_keys(self.corpus, info))

    def add(self, info: ShardInfo, keys: Iterable[str]) -> None:
        """Index a shard's keys, in one transaction (before the shard is listed)."""
        with writing(self.path):
            self.db.execute("BEGIN")
            try:
                shard = self.db.execute(
                    "INSERT INTO shards (name, source) VALUES (?, ?)", (info.path, info.source)
                ).lastrowid
                self.db.executemany("INSERT INTO keys (key, shard) VALUES (?, ?)", ((k, shard) for k in keys))
            except sqlite3.IntegrityError as err:
                self.db.execute("ROLLBACK")
                raise BadInputError(
                    f"a key of this shard is indexed already ({err}): two shards hold the same record; "
                    "`atomfm data inspect` and a --rebuild of the newer source repair it",
                    path=str(self.corpus / info.path),
                ) from None
            self.db.execute("COMMIT")

    def owner(self, key: str) -> str | None:
        """The source holding ``key``, or None."""
        row = self.db.execute(
            "SELECT shards.source FROM keys JOIN shards ON keys.shard = shards.id WHERE keys.key = ?", (key,)
        ).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> KeyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
