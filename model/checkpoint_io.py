"""Reading a model back from disk, and writing the export a calculator loads.

:func:`load_model` reads an export folder (``model.safetensors`` + ``model_config.json``, written by
:func:`save_export`) or a training checkpoint folder (DeepSpeed ZeRO 0–3 or DDP); the layouts, and how
weights come out of each, are :mod:`model.checkpoint_layout`'s.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from data_pipeline.atomic_files import atomic_path, output_folder, write_text_atomic
from data_pipeline.schema import BadInputError
from model.atomfm import AtomFM, ModelConfig
from model.checkpoint_layout import (
    EXPORT_WEIGHTS,
    MODEL_CONFIG,
    CheckpointFolder,
    read_weights,
    verify_checkpoint,
    write_checksums,
)
from model.lora import LoRAConfig, has_lora, merge_lora

# Prefixes a training wrapper may put in front of the model's parameter names.
WRAPPER_PREFIXES = ("", "module.", "model.", "module.model.", "_orig_mod.", "module._orig_mod.")


def load_model(
    path: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> AtomFM:
    """The model in an export or training checkpoint folder, in eval mode (float32 unless ``dtype``)."""
    folder = Path(path)
    if not folder.exists():
        raise BadInputError("no such checkpoint or export folder", path=str(folder))
    if not folder.is_dir():
        raise BadInputError(f"expected a folder holding {MODEL_CONFIG} and the weights", path=str(folder))
    verify_checkpoint(folder)
    config = read_config(CheckpointFolder(folder).model_config)
    model = AtomFM(config)
    state = read_weights(folder)
    try:
        model.load_state_dict(_match_parameter_names(state, model, folder))
    except RuntimeError as err:
        raise BadInputError(
            f"weights do not fit the model in {MODEL_CONFIG}: {err}", path=str(folder)
        ) from None
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def read_config(path: Path) -> ModelConfig:
    """``model_config.json`` → :class:`ModelConfig`; errors name the file."""
    if not path.is_file():
        raise BadInputError(
            f"missing {MODEL_CONFIG}: not an atomfm export or checkpoint folder", path=str(path.parent)
        )
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(f"unreadable JSON ({err})", path=str(path)) from None
    if not isinstance(raw, dict):
        raise BadInputError(
            f"expected a JSON object of model settings, got a {type(raw).__name__}", path=str(path)
        )
    return ModelConfig.from_dict(raw, source=str(path))


def save_export(model: AtomFM, out_dir: str | os.PathLike, provenance: list[Path] | None = None) -> Path:
    """Write ``model.safetensors`` (float32) and ``model_config.json`` into ``out_dir``, each atomically,
    with copies of the ``provenance`` files that exist (the run's ``config.yaml``, ``trainer_state.json`` and
    ``metrics.jsonl``: how the weights were trained, for evaluation reports), all in ``checksums.json``.

    LoRA adapters are merged into plain weights first (on a copy), so the export loads like any model."""
    if has_lora(model):
        model = copy.deepcopy(model)
        merge_lora(model)
        model.config.lora = LoRAConfig()
    files = CheckpointFolder(output_folder(out_dir))
    tensors = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    with atomic_path(files.export_weights) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_text_atomic(files.model_config, json.dumps(model.config.to_dict(), indent=2))
    copied = []
    for source in provenance or []:
        if Path(source).is_file() and Path(source).name not in (EXPORT_WEIGHTS, MODEL_CONFIG):
            write_text_atomic(files.path / Path(source).name, Path(source).read_text())
            copied.append(Path(source).name)
    write_checksums(files.path, [EXPORT_WEIGHTS, MODEL_CONFIG, *copied])
    return files.path


def _match_parameter_names(
    state: dict[str, torch.Tensor], model: AtomFM, folder: Path
) -> dict[str, torch.Tensor]:
    """Strip a training wrapper's prefix so the names match the model; name what is missing otherwise."""
    expected = model.state_dict().keys()
    for prefix in WRAPPER_PREFIXES:
        if all(prefix + k in state for k in expected):
            return {k: state[prefix + k] for k in expected}
    missing = sorted(k for k in expected if k not in state)
    raise BadInputError(
        f"weights do not fit the model in {MODEL_CONFIG}: {len(missing)} missing, "
        f"e.g. {', '.join(missing[:5])}",
        path=str(folder),
    )
