"""atomfm model stage: the SE(3)-equivariant backbone, its heads, and the ASE calculator."""

from __future__ import annotations

from model.atomfm import AtomFM, ModelConfig, model_config
from model.calculator import AtomFMCalculator

__all__ = ["AtomFM", "AtomFMCalculator", "ModelConfig", "model_config"]
