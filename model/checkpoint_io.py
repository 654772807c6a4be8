"""Reading a model back from disk, and writing the export a calculator loads.

Two layouts are read by :func:`load_model`:

- an export folder: ``model.safetensors`` + ``model_config.json`` (written by :func:`save_export`);
- a training checkpoint folder: ``model_config.json`` and either ``ds/`` (DeepSpeed ``save_checkpoint``
  output, ZeRO 0–3; partitioned fp32 master weights are consolidated with DeepSpeed's ``zero_to_fp32``)
  or ``ddp.pt`` (a ``torch.save`` dict whose ``model`` entry is the state dict).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_pipeline.schema import BadInputError
from model.atomfm import AtomFM, ModelConfig

CONFIG_FILE = "model_config.json"
EXPORT_WEIGHTS = "model.safetensors"
DEEPSPEED_DIR = "ds"
DDP_FILE = "ddp.pt"
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
        raise BadInputError("expected a folder holding model_config.json and the weights", path=str(folder))
    config = read_config(folder / CONFIG_FILE)
    model = AtomFM(config)
    state = _read_state_dict(folder)
    try:
        model.load_state_dict(_match_parameter_names(state, model, folder))
    except RuntimeError as err:
        raise BadInputError(
            f"weights do not fit the model in {CONFIG_FILE}: {err}", path=str(folder)
        ) from None
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def read_config(path: Path) -> ModelConfig:
    """``model_config.json`` → :class:`ModelConfig`; errors name the file."""
    if not path.is_file():
        raise BadInputError(
            f"missing {CONFIG_FILE}: not an atomfm export or checkpoint folder", path=str(path.parent)
        )
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise BadInputError(f"unreadable JSON ({err})", path=str(path)) from None
    except (TypeError, ValueError) as err:
        raise BadInputError(str(err), path=str(path)) from None


def save_export(model: AtomFM, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (float32) and ``model_config.json`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    _write_atomically(out / EXPORT_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config_text = json.dumps(model.config.to_dict(), indent=2)
    _write_atomically(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(config_text))
    return out


def _write_atomically(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / EXPORT_WEIGHTS).is_file():
        return load_file(str(folder / EXPORT_WEIGHTS))
    if (folder / DDP_FILE).is_file():
        saved = torch.load(folder / DDP_FILE, map_location="cpu", weights_only=False)
        if not isinstance(saved, dict) or "model" not in saved:
            raise BadInputError(
                "expected a dict with a 'model' state dict", path=str(folder / DDP_FILE), field="model"
            )
        return saved["model"]
    if (folder / DEEPSPEED_DIR).is_dir():
        return _read_deepspeed(folder / DEEPSPEED_DIR)
    raise BadInputError(
        f"no weights: expected {EXPORT_WEIGHTS}, {DDP_FILE} or a {DEEPSPEED_DIR}/ folder", path=str(folder)
    )


def _read_deepspeed(ds_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed checkpoint folder (tag named by its ``latest`` file)."""
    latest = ds_dir / "latest"
    if not latest.is_file():
        raise BadInputError("DeepSpeed checkpoint without a 'latest' file", path=str(ds_dir))
    tag_dir = ds_dir / latest.read_text().strip()
    if not tag_dir.is_dir():
        raise BadInputError(f"'latest' names {tag_dir.name!r}, which is missing", path=str(ds_dir))
    if any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=tag_dir.name)
    return _read_unpartitioned_deepspeed(tag_dir)


def _read_unpartitioned_deepspeed(tag_dir: Path) -> dict[str, torch.Tensor]:
    """ZeRO-0: the module's weights, replaced by the optimizer's fp32 master copies when it kept them."""
    states = tag_dir / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise BadInputError("DeepSpeed checkpoint without mp_rank_00_model_states.pt", path=str(tag_dir))
    saved = torch.load(states, map_location="cpu", weights_only=False)
    module = dict(saved["module"])
    masters = (saved.get("optimizer") or {}).get("fp32_groups") or []
    params = [k for k in module if k not in set(saved.get("buffer_names", []))]
    if len(masters) == 1 and [t.shape for t in masters[0]] == [module[k].shape for k in params]:
        module.update(zip(params, masters[0], strict=True))
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}


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
        f"weights do not fit the model in {CONFIG_FILE}: {len(missing)} missing, "
        f"e.g. {', '.join(missing[:5])}",
        path=str(folder),
    )
