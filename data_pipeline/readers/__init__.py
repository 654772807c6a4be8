"""Structure files → validated :class:`~data_pipeline.schema.Structure` records.

The reader is chosen by file extension (after a ``.gz``/``.bz2``/``.xz`` compression suffix, for text
formats) from :data:`READERS`. Keys are ``source/record[/frame]``; ``source`` defaults to the file stem.
A bad record raises :class:`BadInputError` naming file, record and field, or with ``skip_bad`` is
skipped, logged and counted by that field.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from data_pipeline.readers.ase_formats import read_ase_database, read_ase_images
from data_pipeline.readers.cif import cif_domain, read_cif
from data_pipeline.readers.molecules import read_sdf
from data_pipeline.readers.options import ReaderOptions
from data_pipeline.readers.proteins import read_mmcif, read_pdb
from data_pipeline.readers.sources import InputFile, split_name
from data_pipeline.schema import DOMAINS, BadInputError, Structure, validate

__all__ = ["READERS", "ReaderOptions", "infer_domain", "read_structures", "supported_suffixes"]

log = logging.getLogger(__name__)

Reader = Callable[[InputFile], Iterator[Structure | BadInputError]]


def first_record_domain(f: InputFile) -> str:
    """Domain of the first record a file yields (before validation, so a NaN coordinate does not matter)."""
    for item in READERS[f.suffix].read(f):
        if isinstance(item, BadInputError):
            raise item
        return item.domain
    raise f.error(
        f"no records: the file is empty or not a {f.suffix} file", record=f.source, field="contents"
    )


def always(domain: str) -> Callable[[InputFile], str]:
    """The domain of a format whose every record is of one domain."""
    return lambda f: domain


@dataclass(frozen=True)
class FileFormat:
    """A reader, how a file's domain is told, and whether the file can be read through compression."""

    read: Reader
    domain: Callable[[InputFile], str]
    compressible: bool = True


READERS: dict[str, FileFormat] = {
    ".xyz": FileFormat(read_ase_images, first_record_domain),
    ".extxyz": FileFormat(read_ase_images, first_record_domain),
    ".traj": FileFormat(read_ase_images, first_record_domain, compressible=False),
    ".db": FileFormat(read_ase_database, first_record_domain, compressible=False),
    ".json": FileFormat(read_ase_database, first_record_domain, compressible=False),
    ".aselmdb": FileFormat(read_ase_database, first_record_domain, compressible=False),
    ".pdb": FileFormat(read_pdb, always("protein")),
    ".ent": FileFormat(read_pdb, always("protein")),
    ".cif": FileFormat(read_cif, cif_domain),
    ".mmcif": FileFormat(read_mmcif, always("protein")),
    ".pdbx": FileFormat(read_mmcif, always("protein")),
    ".sdf": FileFormat(read_sdf, always("molecule")),
    ".mol": FileFormat(read_sdf, always("molecule")),
}


def supported_suffixes() -> tuple[str, ...]:
    """Every file-name ending :func:`read_structures` reads, compressed variants included."""
    plain = tuple(READERS)
    return plain + tuple(
        s + c for s, fmt in READERS.items() if fmt.compressible for c in (".gz", ".bz2", ".xz")
    )


def read_structures(
    path: str | Path,
    *,
    domain: str | None = None,
    options: ReaderOptions | None = None,
    source: str | None = None,
    counter: Counter[str] | None = None,
) -> Iterator[Structure]:
    """Validated records of one file, in file order.

    domain: overrides the domain the format implies (see :func:`infer_domain`).
    source: first part of every key (default: the file stem, ``1BD2`` for ``1BD2.cif.gz``).
    counter: with ``options.skip_bad``, incremented by the field of each skipped record's error.
    Raises :class:`BadInputError` at once for a missing file, an unsupported suffix or a bad ``domain``.
    """
    f = _open(path, options or ReaderOptions(), source)
    if domain is not None and domain not in DOMAINS:
        raise BadInputError(
            f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}",
            path=str(f.path),
            field="domain",
        )
    return _records(f, domain, counter)


def infer_domain(path: str | Path) -> str:
    """The domain a file's records have, told from its format.

    PDB/mmCIF → ``protein``; crystal CIF (a ``.cif`` with a cell) → ``material``; SDF/MOL → ``molecule``;
    XYZ/ASE formats → ``material`` when the first record is periodic, else ``molecule`` (reading decides
    per record, so a file mixing both gives both). Raises :class:`BadInputError` for a missing file, an
    unsupported suffix, or a file whose format cannot tell (an unparsable first image, a CIF with neither).
    """
    f = _open(path, ReaderOptions(), None)
    return READERS[f.suffix].domain(f)


def _open(path: str | Path, options: ReaderOptions, source: str | None) -> InputFile:
    path = Path(path)
    stem, suffix, compression = split_name(path)
    fmt = READERS.get(suffix)
    if fmt is None:
        raise BadInputError(
            f"no reader for {suffix or 'files without an extension'!r}; supported: "
            f"{', '.join(READERS)} (text formats also with .gz, .bz2, .xz)",
            path=str(path),
            field="suffix",
        )
    if compression and not fmt.compressible:
        raise BadInputError(
            f"a compressed {suffix} file cannot be read in place; decompress it first",
            path=str(path),
            field="suffix",
        )
    if not path.is_file():
        raise BadInputError("no such file", path=str(path), field="path")
    return InputFile(path=path, source=source or stem, options=options)


def _records(f: InputFile, domain: str | None, counter: Counter[str] | None) -> Iterator[Structure]:
    if f.path.stat().st_size == 0:
        _skip(f.error("the file is empty (0 bytes)", record=f.source, field="contents"), f.options, counter)
        return
    items = READERS[f.suffix].read(f)
    seen = 0
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except BadInputError as err:  # the file cannot be read past this point
            _skip(err, f.options, counter)
            return
        seen += 1
        if isinstance(item, BadInputError):
            _skip(item, f.options, counter)
            continue
        try:
            record = validate(item if domain is None else replace(item, domain=domain), path=str(f.path))
        except BadInputError as err:
            _skip(err, f.options, counter)
            continue
        yield record
    if seen == 0:
        _skip(
            f.error(
                f"no records: the file is empty or not a {f.suffix} file", record=f.source, field="contents"
            ),
            f.options,
            counter,
        )


def _skip(err: BadInputError, options: ReaderOptions, counter: Counter[str] | None) -> None:
    """Raise ``err``, or with ``skip_bad`` log it and count it under its field."""
    if not options.skip_bad:
        raise err
    log.warning("skipped bad record: %s", err)
    if counter is not None:
        counter[err.field or "contents"] += 1
