"""Training engines by name (``engine:`` in the config): DeepSpeed by default, plain DDP as the fallback."""

from __future__ import annotations

from torch import nn

from train.config import TrainConfig
from train.engine.base import TrainEngine
from train.engine.ddp_engine import DDPEngine
from train.engine.deepspeed_engine import DeepSpeedEngine
from train.engine.distributed import DistContext

ENGINES: dict[str, type] = {"deepspeed": DeepSpeedEngine, "ddp": DDPEngine}


def build_engine(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> TrainEngine:
    """The engine ``cfg.engine`` names, wrapping ``model`` on ``ctx.device``."""
    return ENGINES[cfg.engine](model, cfg, ctx)


__all__ = ["ENGINES", "TrainEngine", "build_engine"]
