"""How one :class:`Structure` is stored in a webdataset shard, and read back.

A sample is two tar members sharing a safe member key (``{index:09d}``; the structure's own key, which may
contain dots and slashes, lives inside the JSON):

- ``<member>.npz``: numeric arrays (``atomic_numbers``, ``positions``, optional ``cell``, ``forces``,
  ``stress`` and ``per_atom.<name>``);
- ``<member>.json``: scalars and strings (key, domain, pbc, charge, spin, level_of_theory, energy, group_id,
  split, extra, and ``properties`` when the structure has any).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from data_pipeline.schema import BadInputError, Structure, validate

SCHEMA_VERSION = 1


def encode_sample(s: Structure, member_key: str) -> dict[str, Any]:
    """A webdataset sample dict (``__key__``, ``npz``, ``json``) for ``s``."""
    arrays: dict[str, np.ndarray] = {
        "atomic_numbers": np.asarray(s.atomic_numbers, dtype=np.uint8),
        "positions": np.asarray(s.positions, dtype=np.float32),
    }
    if s.cell is not None:
        arrays["cell"] = np.asarray(s.cell, dtype=np.float32)
    if s.forces is not None:
        arrays["forces"] = np.asarray(s.forces, dtype=np.float32)
    if s.stress is not None:
        arrays["stress"] = np.asarray(s.stress, dtype=np.float32)
    for name, arr in s.per_atom.items():
        arrays[f"per_atom.{name}"] = np.asarray(arr)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    meta = {
        "schema": SCHEMA_VERSION,
        "key": s.key,
        "domain": s.domain,
        "pbc": [bool(x) for x in np.asarray(s.pbc).reshape(3)],
        "charge": int(s.charge),
        "spin": int(s.spin),
        "level_of_theory": s.level_of_theory,
        "energy": None if s.energy is None else float(s.energy),
        "group_id": s.group_id,
        "split": s.split,
        "extra": s.extra,
    }
    if s.properties:
        meta["properties"] = {name: float(value) for name, value in s.properties.items()}
    return {"__key__": member_key, "npz": buf.getvalue(), "json": json.dumps(meta).encode()}


def decode_sample(sample: dict[str, Any], *, source: str | None = None) -> Structure:
    """Inverse of :func:`encode_sample` on the raw bytes webdataset yields; validates the result.

    Raises :class:`BadInputError` naming the shard (``source``), member key and field on any damage.
    """
    member = sample.get("__key__", "?")
    where = source or sample.get("__url__")
    try:
        meta = json.loads(sample["json"])
    except KeyError:
        raise BadInputError("sample has no .json member", path=where, record=member, field="json") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BadInputError(f"unreadable JSON ({err})", path=where, record=member, field="json") from None
    try:
        with np.load(io.BytesIO(sample["npz"]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except KeyError:
        raise BadInputError("sample has no .npz member", path=where, record=meta.get("key", member),
                            field="npz") from None
    except Exception as err:  # zipfile / numpy raise many types on damaged bytes
        raise BadInputError(f"unreadable arrays ({type(err).__name__}: {err})", path=where,
                            record=meta.get("key", member), field="npz") from None
    try:
        s = Structure(
            key=meta["key"],
            domain=meta["domain"],
            atomic_numbers=arrays["atomic_numbers"],
            positions=arrays["positions"],
            cell=arrays.get("cell"),
            pbc=np.asarray(meta["pbc"], dtype=bool),
            charge=meta.get("charge", 0),
            spin=meta.get("spin", 1),
            level_of_theory=meta.get("level_of_theory", "none"),
            energy=meta.get("energy"),
            forces=arrays.get("forces"),
            stress=arrays.get("stress"),
            group_id=meta.get("group_id", ""),
            split=meta.get("split", ""),
            per_atom={k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("per_atom.")},
            properties=meta.get("properties", {}),
            extra=meta.get("extra", {}),
        )
    except KeyError as err:
        raise BadInputError("missing field", path=where, record=meta.get("key", member),
                            field=str(err.args[0])) from None
    return validate(s, path=where)
