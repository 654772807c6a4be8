"""The pieces of a run, each buildable on its own: the model (from its config, or with a checkpoint's
weights), its reference-energy fit, the stream, the EMA. The trainer, fine-tuning and evaluation call them.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from data_pipeline.stream import StreamConfig, StructureStream
from model.atomfm import AtomFM, ModelConfig
from model.checkpoint_io import load_model
from train.config import TrainConfig
from train.ema import ParameterEMA
from train.engine.distributed import DistContext
from train.reference_fit import ReferenceFit, fit_reference_energies_on_corpus, main_level_of_theory


def resolved_model_config(cfg: TrainConfig) -> ModelConfig:
    """The run's model config; unless it names the ``main_level_of_theory``, the corpus's most common one,
    so a checkpoint's calculator answers as, say, GFN2-xTB rather than at the unlabelled level."""
    model_cfg = cfg.model_config()
    if model_cfg.main_level_of_theory == "none":
        model_cfg.main_level_of_theory = main_level_of_theory(cfg.data.corpus, cfg.data.split)
    return model_cfg


def build_model(cfg: TrainConfig) -> AtomFM:
    """The model the config names, freshly initialised (same weights on every rank: the caller seeds first)."""
    return AtomFM(resolved_model_config(cfg))


def load_pretrained(path: str | os.PathLike) -> AtomFM:
    """The model of an export or a training checkpoint (ZeRO 0–3 or DDP), its weights in fp32, in train mode."""
    return load_model(path, dtype=torch.float32).train()


def known_levels(model: AtomFM) -> torch.Tensor:
    """[num_levels] bool: levels of theory whose reference-energy row the model already holds (non-zero)."""
    return model.reference_energies.energies.abs().sum(dim=1) > 0


def fit_reference_energies(
    model: AtomFM, data: StreamConfig, ctx: DistContext, *, keep_known_levels: bool
) -> ReferenceFit:
    """Fit the model's per-element reference energies over ``data``'s split (rank 0; every rank receives it).

    With ``keep_known_levels`` (a model started from pretrained weights) every level the model already has a
    table for keeps it, and only new levels take the fitted rows.
    """
    num_levels = model.config.backbone.num_levels
    fit = fit_reference_energies_on_corpus(data.corpus, data.split, num_levels) if ctx.is_main else None
    fit = ctx.broadcast_object(fit)
    table = fit.table.to(model.reference_energies.energies)
    if keep_known_levels:
        keep = known_levels(model)
        table = torch.where(keep[:, None], model.reference_energies.energies, table)
    model.reference_energies.set_table(table)
    return fit


def build_stream(data: StreamConfig, ctx: DistContext) -> StructureStream:
    """This rank's share of the stream."""
    return StructureStream(data, ctx.rank, ctx.world_size)


def build_ema(module: nn.Module, decay: float) -> ParameterEMA | None:
    """An EMA of ``module``'s weights, or None when ``decay`` is 0."""
    return ParameterEMA(module, decay) if decay > 0 else None
