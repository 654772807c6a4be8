"""The pieces of a run, each buildable on its own: the model (from its config, and a checkpoint's weights
to start from), its reference-energy fit, the stream, the EMA. The trainer and fine-tuning call them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data_pipeline.corpus_reader import read_split
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.stream import StreamConfig, StructureStream
from data_pipeline.vocab import extend_levels, level_index
from model.atomfm import AtomFM, ModelConfig, model_config
from model.checkpoint_io import load_model, read_config
from model.checkpoint_layout import CheckpointFolder, resolve_checkpoint
from model.predict import predict_structures
from train.config import TRAINING_SWITCHES, TrainConfig
from train.ema import ParameterEMA
from train.engine.distributed import DistContext
from train.finetune import ReplayConfig
from train.reference_fit import (
    ReferenceFit,
    corpus_levels,
    fit_reference_energies_on_corpus,
    main_level_of_theory,
)


def resolved_model_config(cfg: TrainConfig) -> ModelConfig:
    """The run's model config.

    Its vocabulary of levels of theory is the checkpoint's it starts from (``model.init_from``) or the
    built-in one, plus every level the training split names that it lacks (a new level gets a conditioning
    row and a reference-energy row). Unless the config names the ``main_level_of_theory``, it is the corpus's
    most common one, so a checkpoint's calculator answers as, say, GFN2-xTB rather than at the unlabelled
    level."""
    overrides = dict(cfg.model.overrides)
    base = cfg.model_config().levels_of_theory
    if cfg.model.init_from:
        base = read_config(
            CheckpointFolder(_weights_folder(cfg.model.init_from)).model_config
        ).levels_of_theory
    levels = extend_levels(base, corpus_levels(cfg.data.corpus, cfg.data.split))
    if levels != cfg.model_config().levels_of_theory:
        overrides.update(levels_of_theory=levels, num_levels=len(levels))
    switches = {name: getattr(cfg.model, name) for name in TRAINING_SWITCHES}
    model_cfg = model_config(cfg.model.size, **overrides, **switches)
    if model_cfg.main_level_of_theory == "none":
        model_cfg.main_level_of_theory = main_level_of_theory(cfg.data.corpus, cfg.data.split)
    return model_cfg


def model_stream_config(
    data: StreamConfig, model: AtomFM, replay: ReplayConfig | None = None
) -> StreamConfig:
    """``data`` indexing levels of theory in the model's vocabulary, carrying the structure properties its
    ``properties`` head predicts and the per-atom classes its ``residue`` head classifies, and mixing in the fine-tuning ``replay`` corpus when one is set."""
    out = dataclasses.replace(
        data,
        levels_of_theory=list(model.config.levels_of_theory),
        properties=property_names(model),
        atom_labels=residue_targets(model),
    )
    if replay is not None and replay.active:
        out = dataclasses.replace(
            out,
            replay_corpus=list(replay.corpus),
            replay_fraction=replay.fraction,
            replay_split=replay.split,
            replay_domain_weights=replay.domain_weights,
        )
    return out


def property_names(model: AtomFM) -> list[str]:
    """The structure properties the model's ``properties`` head predicts, one per column (none without it)."""
    head = model.heads["properties"] if "properties" in model.heads else None
    return list(getattr(head, "names", []))


def new_property_head(model: AtomFM, fresh: list[str] | None, reinit_heads: list[str]) -> bool:
    """Whether the model's ``properties`` head starts untrained (a fresh model, a head the initial weights
    lack, or a re-initialised one), so its output statistics are to be fitted."""
    if "properties" not in model.heads:
        return False
    return (
        fresh is None or "properties" in reinit_heads or any(n.startswith("heads.properties.") for n in fresh)
    )


def residue_targets(model: AtomFM) -> list[str]:
    """The per-atom class label the model's ``residue`` head classifies (``secondary_structure``), if any."""
    head = model.heads["residue"] if "residue" in model.heads else None
    target = getattr(head, "target", None)
    return [target] if target else []


def fit_property_statistics(model: AtomFM, data: StreamConfig, ctx: DistContext) -> dict[str, Any]:
    """Set the ``properties`` head's output shift and scale to the mean and standard deviation of each of its
    properties over ``data``'s split (rank 0 reads it; every rank receives it). A property no structure
    carries is an error naming it."""
    names = property_names(model)
    stats = None
    if ctx.is_main:
        values: dict[str, list[float]] = {name: [] for name in names}
        for s in read_split(data.corpus, data.split):
            for name in names:
                if name in s.properties:
                    values[name].append(s.properties[name])
        missing = [name for name in names if not values[name]]
        stats = (
            {"missing": missing}
            if missing
            else {
                name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "structures": len(v)}
                for name, v in values.items()
            }
        )
    stats = ctx.broadcast_object(stats)
    if "missing" in stats:
        raise BadInputError(
            f"the properties head predicts {', '.join(stats['missing'])}, which no structure of split "
            f"{data.split!r} of {', '.join(data.corpus)} carries (Structure.properties)",
            field="model.overrides.head_options.properties.names",
        )
    head = model.heads["properties"]
    with torch.no_grad():
        head.set_statistics(
            torch.tensor([stats[n]["mean"] for n in names]), torch.tensor([stats[n]["std"] for n in names])
        )
    return stats


def _weights_folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if folder.is_dir() and not CheckpointFolder(folder).model_config.is_file():
        folder = resolve_checkpoint(folder)  # a run folder: its latest checkpoint
    return folder


def build_model(cfg: TrainConfig) -> AtomFM:
    """The model the config names, freshly initialised (same weights on every rank: the caller seeds first)."""
    return AtomFM(resolved_model_config(cfg))


def load_initial_weights(model: AtomFM, path: str | os.PathLike) -> list[str]:
    """Copy the weights of an export, a checkpoint or a run folder (its latest checkpoint) into ``model``:
    no optimiser, no step counter, and the record of what they were trained on (``config.coverage``).
    Parameters the checkpoint lacks (new heads) keep their initialisation and are returned; a parameter of
    another shape (another size, lmax, vocabulary) is an error naming both."""
    folder = _weights_folder(path)
    source = load_model(folder, dtype=torch.float32)
    ours = model.state_dict()
    theirs = {_adapted_name(name, ours): tensor for name, tensor in source.state_dict().items()}
    theirs = _grow_vocabulary(theirs, source, model)
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
    model.config.coverage = source.config.coverage  # what those weights were trained on
    with torch.no_grad():
        for name, tensor in theirs.items():
            if name in ours:
                ours[name].copy_(tensor)
    return fresh


def _grow_vocabulary(
    theirs: dict[str, torch.Tensor], source: AtomFM, model: AtomFM
) -> dict[str, torch.Tensor]:
    """The checkpoint's level-of-theory tensors grown to the model's longer vocabulary: a new level's
    conditioning row starts as the nearest known level's (the longest shared name prefix, e.g. ``wb97x-d``
    for ``wb97x-d/def2-tzvp``) or the mean of the levels the checkpoint has references for; its reference
    energies start at zero (the fit fills them)."""
    old, new = source.config.levels_of_theory, model.config.levels_of_theory
    if new == old:
        return theirs
    if new[: len(old)] != old:
        raise BadInputError(
            "this run's levels of theory do not extend the checkpoint's (names are only appended)",
            field="model.init_from",
        )
    out = dict(theirs)
    rows_known = source.reference_energies.energies.abs().sum(dim=1) > 0
    for name in ("backbone.conditioning.level_of_theory.weight", "reference_energies.energies"):
        table = theirs[name]
        grown = table.new_zeros(len(new), *table.shape[1:])
        grown[: len(old)] = table
        if name.startswith("backbone."):
            for i, level in enumerate(new[len(old) :], start=len(old)):
                nearest = nearest_level(level, old)
                grown[i] = table[old.index(nearest)] if nearest else table[rows_known].mean(dim=0)
        out[name] = grown
    return out


def nearest_level(name: str, known: list[str], min_prefix: int = 3) -> str | None:
    """The known level sharing the longest name prefix with ``name`` (at least ``min_prefix`` characters)."""

    def shared(a: str, b: str) -> int:
        return len(os.path.commonprefix([a, b]))

    candidates = [k for k in known if k not in ("none", "other") and shared(name, k) >= min_prefix]
    return max(candidates, key=lambda k: (shared(name, k), -len(k)), default=None)


def _adapted_name(name: str, ours: dict[str, torch.Tensor]) -> str:
    """A plain weight's name in a model whose weight carries LoRA adapters (``...parametrizations.weight.original``)."""
    if name.endswith(".weight") and name not in ours:
        adapted = f"{name[: -len('weight')]}parametrizations.weight.original"
        if adapted in ours:
            return adapted
    return name


def _config_difference(a: AtomFM, b: AtomFM) -> str:
    x, y = a.config.backbone.to_dict(), b.config.backbone.to_dict()
    changed = [
        f"{k} {x[k]} vs {y[k]}"
        for k in x
        if x[k] != y.get(k) and k not in ("activation_checkpointing", "compile")
    ]
    return ", ".join(changed) or "same backbone"


def known_levels(model: AtomFM) -> torch.Tensor:
    """[num_levels] bool: levels of theory whose reference-energy row the model already holds (non-zero)."""
    return model.reference_energies.energies.abs().sum(dim=1) > 0


def fit_reference_energies(
    model: AtomFM,
    data: StreamConfig,
    ctx: DistContext,
    *,
    keep_known_levels: bool,
    ridge: float | str = 0.0,
    held_out_split: str = "val",
) -> ReferenceFit:
    """Fit the model's per-element reference energies over ``data``'s split (rank 0; every rank receives it).

    With ``keep_known_levels`` (a model started from pretrained weights) every level the model already has a
    table for keeps it, and only new levels take the fitted rows, fitted on what the pretrained model leaves
    unexplained (the label minus its own energy without reference energies). ridge, held_out_split: as in
    :func:`~train.reference_fit.fit_reference_energies_on_corpus`.
    """
    levels = model.config.levels_of_theory
    residual = _energy_without_references(model) if keep_known_levels else None
    fit = (
        fit_reference_energies_on_corpus(
            data.corpus, data.split, levels, residual, ridge=ridge, held_out_split=held_out_split
        )
        if ctx.is_main
        else None
    )
    fit = ctx.broadcast_object(fit)
    table = fit.table.to(model.reference_energies.energies)
    if keep_known_levels:
        keep = known_levels(model)
        table = torch.where(keep[:, None], model.reference_energies.energies, table)
        table = _unseen_elements_from_nearest_level(table, keep, levels)
    model.reference_energies.set_table(table)
    return fit


def _unseen_elements_from_nearest_level(
    table: torch.Tensor, known: torch.Tensor, levels: list[str]
) -> torch.Tensor:
    """A new level's elements that the fine-tuning data did not contain (fitted value 0, to round-off) take the reference
    energy of the known level its conditioning row started from (:func:`nearest_level`; else the mean of the
    known levels): a fine-tuning set of 50 molecules without fluorine must not leave F at 0 eV, which puts the
    whole atomic energy of every F atom into the error."""
    if not bool(known.any()):
        return table
    table = table.clone()
    names = [levels[i] for i in range(len(levels)) if bool(known[i])]
    for i, level in enumerate(levels):
        if bool(known[i]) or bool(table[i].abs().max() < 1e-6):
            continue  # a level the model knew keeps its table; one absent from the data stays empty
        nearest = nearest_level(level, names)
        source = table[levels.index(nearest)] if nearest else table[known].mean(dim=0)
        unseen = table[i].abs() < 1e-6  # least squares leaves an absent element at 0 (to round-off)
        table[i] = torch.where(unseen, source, table[i])
    return table


def _energy_without_references(model: AtomFM):
    """structure → the model's energy at the structure's level minus its reference energies (eV)."""
    known = known_levels(model)

    def residual(s: Structure) -> float:
        index = level_index(s.level_of_theory, model.config.levels_of_theory)
        if bool(known[index]):
            return 0.0  # a level the table keeps: its residual does not enter the fit
        with torch.no_grad():
            ((_, prediction),) = predict_structures(model, [s], forces="none", stress=False)
        reference = model.reference_energies.energies[
            index, torch.as_tensor(s.atomic_numbers, dtype=torch.long)
        ]
        return prediction.energy - float(reference.sum())

    return residual


def build_stream(data: StreamConfig, ctx: DistContext) -> StructureStream:
    """This rank's share of the stream."""
    return StructureStream(data, ctx.rank, ctx.world_size)


def build_ema(module: nn.Module, decay: float) -> ParameterEMA | None:
    """An EMA of ``module``'s weights, or None when ``decay`` is 0."""
    return ParameterEMA(module, decay) if decay > 0 else None
