"""The pieces of a run, each buildable on its own: the model (from its config, and a checkpoint's weights
to start from), its reference-energy fit, the stream, the EMA. The trainer and fine-tuning call them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from data_pipeline.schema import BadInputError
from data_pipeline.stream import StreamConfig, StructureStream
from model.atomfm import AtomFM, ModelConfig
from model.checkpoint_io import load_model
from model.checkpoint_layout import CheckpointFolder, resolve_checkpoint
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


def load_initial_weights(model: AtomFM, path: str | os.PathLike) -> list[str]:
    """Copy the weights of an export, a checkpoint or a run folder (its latest checkpoint) into ``model``:
    no optimiser, no step counter. Parameters the checkpoint lacks (new heads) keep their initialisation and
    are returned; a parameter of another shape (another size, lmax, vocabulary) is an error naming both."""
    folder = Path(path)
    if folder.is_dir() and not CheckpointFolder(folder).model_config.is_file():
        folder = resolve_checkpoint(folder)
    source = load_model(folder, dtype=torch.float32)
    ours = model.state_dict()
    theirs = {_adapted_name(name, ours): tensor for name, tensor in source.state_dict().items()}
    for name, tensor in theirs.items():
        if name in ours and ours[name].shape != tensor.shape:
            raise BadInputError(
                f"the checkpoint's {name} has shape {tuple(tensor.shape)}, this run's model "
                f"{tuple(ours[name].shape)}: the configs differ ({_config_difference(source, model)}); "
                "start from a checkpoint of the same size, lmax and channels",
                path=str(folder),
                field="model.init_from",
            )
    if source.config.backbone.cutoff != model.config.backbone.cutoff:
        raise BadInputError(
            f"the checkpoint was trained with cutoff {source.config.backbone.cutoff} Å, this run's model has "
            f"{model.config.backbone.cutoff} Å; set the same model.overrides.cutoff",
            path=str(folder),
            field="model.init_from",
        )
    fresh = sorted(set(ours) - set(theirs))
    with torch.no_grad():
        for name, tensor in theirs.items():
            if name in ours:
                ours[name].copy_(tensor)
    return fresh


def _adapted_name(name: str, ours: dict[str, torch.Tensor]) -> str:
    """A plain weight's name in a model whose weight carries LoRA adapters (``...parametrizations.weight.original``)."""
    if name.endswith(".weight") and name not in ours:
        adapted = f"{name[: -len('weight')]}parametrizations.weight.original"
        if adapted in ours:
            return adapted
    return name


def _config_difference(a: AtomFM, b: AtomFM) -> str:
    x, y = a.config.backbone.to_dict(), b.config.backbone.to_dict()
    changed = [f"{k} {x[k]} vs {y[k]}" for k in x if x[k] != y.get(k) and k != "activation_checkpointing"]
    return ", ".join(changed) or "same backbone"


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
