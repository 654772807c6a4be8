"""atomfm model stage: the SE(3)-equivariant backbone, its heads, and the ASE calculator.

The public names load lazily, so `atomfm --help` and `atomfm data ...` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AtomFM": "model.atomfm",
    "ModelConfig": "model.atomfm",
    "model_config": "model.atomfm",
    "AtomFMCalculator": "model.calculator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
