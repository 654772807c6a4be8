"""`atomfm data upgrade DIR`: rewrite a version 1 corpus (atom counts inline in manifest.json) as version 2.

Writes each shard's atom-counts file, each source's shard list and the key index, then the new manifest.json
(atomically, last: until then the corpus reads as before). The shards are not touched, so their sha256, the
stream's batches and a saved stream state stay valid. The next `atomfm data ingest` into an old corpus does
the same on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline.ingest import corpus_lock
from data_pipeline.key_index import KeyIndex
from data_pipeline.manifest import VERSION, read_manifest, write_manifest
from data_pipeline.schema import BadInputError


def upgrade_corpus(corpus: str | Path) -> bool:
    """Upgrade the corpus folder in place; False if it is version 2 already."""
    folder = Path(corpus)
    with corpus_lock(folder):
        manifest = read_manifest(folder)
        if manifest.version >= VERSION:
            return False
        write_manifest(folder, manifest)
        with KeyIndex(folder) as keys:
            keys.sync(manifest)
    return True


def main(args: argparse.Namespace) -> int:
    """The `atomfm data upgrade` command."""
    try:
        upgraded = upgrade_corpus(args.corpus)
    except BadInputError as err:
        print(f"atomfm data upgrade: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.corpus}: " + (f"upgraded to manifest version {VERSION}" if upgraded else "already up to date"))
    return 0
