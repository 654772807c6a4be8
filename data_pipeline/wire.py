"""Batches from DataLoader worker processes to the trainer as one message each, tensors by value.

A DataLoader worker hands its items to the main process through a multiprocessing queue, and torch's queue
pickler moves every tensor through shared memory: one file descriptor per tensor, each passed over a socket
connection of its own. A packed batch carries about 70 small tensors (positions, neighbour list, labels,
masks, PyG's slice tables), and that hand-over measured about 150 ms a batch on the demo's conservative
stage (a fifth of its step). A batch is tens of kB (63 kB for 81 atoms): copied by value, as numpy arrays
in one pickle, it goes over in under 2 ms. :func:`to_wire` runs in the worker (the DataLoader's ``collate_fn``),
:func:`from_wire` in the main process; values, dtypes and shapes are unchanged.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from typing import Any

import torch

_BY_VALUE = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
_BY_VALUE |= {torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128}


class Wire:
    """One item pickled for the trip from a worker process: ``payload`` is the pickle's bytes."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return Wire, (self.payload,)


def _tensor_by_value(t: torch.Tensor) -> tuple[Any, ...]:
    if t.dtype in _BY_VALUE and t.device.type == "cpu" and not t.requires_grad:
        return torch.from_numpy, (t.numpy(),)
    return t.__reduce_ex__(4)  # what pickle does without this table: by value too


def to_wire(item: Any) -> Wire:
    """``item`` pickled with every plain CPU tensor as a numpy array (no shared-memory file descriptors)."""
    buffer = io.BytesIO()
    # protocol 4: each array is unpickled into memory of its own (5 would make every tensor a view into the
    # one message, of mixed dtypes, which torch.save refuses)
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[torch.Tensor] = _tensor_by_value
    pickler.dump(item)
    return Wire(buffer.getvalue())


def from_wire(item: Any) -> Any:
    """The item :func:`to_wire` sent (each tensor writable, with memory of its own); anything else as it is."""
    return pickle.loads(item.payload) if isinstance(item, Wire) else item
