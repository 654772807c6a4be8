"""The frames of an (extended) XYZ file, cut by their atom-count headers before ASE parses one.

A header is checked against what the file can hold before its lines are read: a count that is not a whole
number, is negative, or claims more atoms than the rest of the file has bytes for (an atom line takes at least
:data:`MIN_ATOM_LINE_BYTES`) is an error naming the line, at once, where ASE's own scan would read a billion
empty lines first. A frame cut short by the end of the file is an error naming its header's line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

from data_pipeline.readers.sources import InputFile

MIN_ATOM_LINE_BYTES = 7  # "H 0 0 0": a symbol and three coordinates
MAX_VEC_LINES = 3  # ASE's old lattice lines ("VEC1 ...") after the atoms


@dataclass(frozen=True)
class XYZFrame:
    """One frame's text (header, comment, atom lines) and the file line its header is on (from 1)."""

    index: int
    line: int
    text: str


def xyz_frames(f: InputFile) -> Iterator[XYZFrame]:
    """The frames of ``f`` in order; a bad header or a cut frame raises ``BadInputError`` naming the line."""
    size = None if f.compression else f.path.stat().st_size
    with io.TextIOWrapper(f.open_binary(), encoding="utf-8", errors="replace") as text:
        lines = _Lines(text)
        index = 0
        while (header := lines.next_non_blank()) is not None:
            number = lines.number
            key = f.key(index)
            try:
                count = int(header.strip())
            except ValueError:
                raise f.error(
                    f"line {number}: expected the atom count of a frame, got {header.strip()[:40]!r}",
                    record=key,
                    field="contents",
                ) from None
            if count < 0:
                raise f.error(f"line {number}: negative atom count {count}", record=key, field="contents")
            if size is not None and count * MIN_ATOM_LINE_BYTES > size - lines.offset:
                raise f.error(
                    f"line {number}: the header claims {count:,} atoms, but the {size - lines.offset:,} bytes "
                    f"after it hold at most {max(size - lines.offset, 0) // MIN_ATOM_LINE_BYTES:,} atom lines; "
                    "is the count or the file damaged?",
                    record=key,
                    field="contents",
                )
            body = lines.take(count + 1)
            if len(body) < count + 1:
                raise f.error(
                    f"line {number}: the header claims {count} atoms, but the file ends after "
                    f"{max(len(body) - 1, 0)} atom lines; is it truncated?",
                    record=key,
                    field="contents",
                )
            body += lines.take_while_vec()
            yield XYZFrame(index=index, line=number, text=header + "".join(body))
            index += 1


class _Lines:
    """Lines of a text stream with their numbers, byte offset and one line of look-ahead."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream, self.number, self.offset = stream, 0, 0
        self._ahead: str | None = None

    def _read(self) -> str:
        if self._ahead is not None:
            line, self._ahead = self._ahead, None
        else:
            line = self.stream.readline()
        if line:
            self.number += 1
            self.offset += len(line.encode("utf-8", errors="replace"))
        return line

    def _unread(self, line: str) -> None:
        self._ahead = line
        self.number -= 1
        self.offset -= len(line.encode("utf-8", errors="replace"))

    def next_non_blank(self) -> str | None:
        while line := self._read():
            if line.strip():
                return line
        return None

    def take(self, count: int) -> list[str]:
        out = []
        while len(out) < count and (line := self._read()):
            out.append(line)
        return out

    def take_while_vec(self) -> list[str]:
        out = []
        while len(out) < MAX_VEC_LINES and (line := self._read()):
            if not line.lstrip().startswith("VEC"):
                self._unread(line)
                break
            out.append(line)
        return out
