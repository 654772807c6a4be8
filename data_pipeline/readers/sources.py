"""One input file as readers see it: its format suffix, compression, source name and record keys."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

from data_pipeline.readers.options import ReaderOptions
from data_pipeline.schema import BadInputError

COMPRESSIONS: dict[str, Callable[[Path], IO[bytes]]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
}


def split_name(path: Path) -> tuple[str, str, str]:
    """``(stem, format suffix, compression suffix)``: ``1BD2.cif.gz`` → ``("1BD2", ".cif", ".gz")``."""
    name = path.name
    compression = path.suffix.lower() if path.suffix.lower() in COMPRESSIONS else ""
    if compression:
        name = name[: -len(compression)]
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)] or name, suffix.lower(), compression


@dataclass(frozen=True)
class InputFile:
    """A file being read: ``path``, the ``source`` that starts its record keys, and the reading options."""

    path: Path
    source: str
    options: ReaderOptions

    @property
    def suffix(self) -> str:
        return split_name(self.path)[1]

    @property
    def compression(self) -> str:
        return split_name(self.path)[2]

    def key(self, *parts: int | str) -> str:
        """Record key ``source/record[/frame]``."""
        return "/".join([self.source, *map(str, parts)])

    def error(self, message: str, *, record: str, field: str) -> BadInputError:
        return BadInputError(message, path=str(self.path), record=record, field=field)

    def open_binary(self) -> IO[bytes]:
        """The file's bytes, decompressed when its name ends in ``.gz``, ``.bz2`` or ``.xz``."""
        opener = COMPRESSIONS.get(self.compression, open)
        return opener(self.path, "rb")

    @cached_property
    def text(self) -> str:
        """The whole (decompressed) file as text; undecodable bytes become U+FFFD."""
        try:
            with self.open_binary() as stream:
                return stream.read().decode("utf-8", errors="replace")
        except (OSError, EOFError, lzma.LZMAError) as err:
            raise self.error(
                f"cannot decompress ({err}); the file is truncated or corrupt",
                record=self.key(0),
                field="contents",
            ) from None
