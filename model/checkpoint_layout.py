"""The one owner of the checkpoint and export layouts: file names, where runs keep checkpoints, and how
weights are read out of each layout (DeepSpeed's internals included).

A run folder keeps its checkpoints in ``<run>/checkpoints/step_00000100/``:

| file | written by | holds |
| --- | --- | --- |
| ``ds/`` or ``ddp.pt`` | the engine | model, optimiser, scheduler (DeepSpeed's own layout, ZeRO shards included) |
| ``rank_00000.pt`` … | every rank | RNG states, stream position, task state (contrast queue), ZeRO-3 EMA partition |
| ``ema.pt`` | rank 0 | the EMA weights when they are not partitioned |
| ``trainer_state.json`` | rank 0 | step counters, skipped steps, world size |
| ``config.yaml`` | rank 0 | the resolved run config |
| ``model_config.json`` | rank 0 | what :func:`model.checkpoint_io.load_model` rebuilds the model from |

An export folder holds ``model.safetensors`` (fp32) and ``model_config.json``. A folder named ``step_*`` is
complete by construction: it gets that name (from ``.tmp-step_*``) only once every rank has written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_pipeline.schema import BadInputError

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
MODEL_CONFIG = "model_config.json"
RUN_CONFIG = "config.yaml"
TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.pt"
EXPORT_WEIGHTS = "model.safetensors"
DDP_FILE = "ddp.pt"
DEEPSPEED_DIR = "ds"
DEEPSPEED_TAG = "state"
DEEPSPEED_MODEL_STATES = "mp_rank_00_model_states.pt"  # ZeRO-0/1/2 module weights (DeepSpeed's name)
DEEPSPEED_OPTIMIZER_GLOB = "*_optim_states.pt"  # ZeRO partitions of the fp32 master weights
RANK_FILE_GLOB = "rank_*.pt"
BEST_FILE = "best.json"  # in <run>/checkpoints/: which checkpoint scored best in validation


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


@dataclass(frozen=True)
class CheckpointFolder:
    """Paths of the files in one checkpoint or export folder."""

    path: Path

    @property
    def model_config(self) -> Path:
        return self.path / MODEL_CONFIG

    @property
    def run_config(self) -> Path:
        return self.path / RUN_CONFIG

    @property
    def trainer_state(self) -> Path:
        return self.path / TRAINER_STATE

    @property
    def ema(self) -> Path:
        return self.path / EMA_FILE

    @property
    def export_weights(self) -> Path:
        return self.path / EXPORT_WEIGHTS

    @property
    def ddp(self) -> Path:
        return self.path / DDP_FILE

    @property
    def deepspeed(self) -> Path:
        return self.path / DEEPSPEED_DIR

    def rank(self, rank: int) -> Path:
        return self.path / rank_file(rank)

    def rank_files(self) -> list[Path]:
        return sorted(self.path.glob(RANK_FILE_GLOB))

    @property
    def is_training_checkpoint(self) -> bool:
        return self.trainer_state.is_file()


def checkpoints_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def best_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint validation chose (``<run>/checkpoints/best.json``)."""
    pointer = checkpoints_root(run_dir) / BEST_FILE
    if not pointer.is_file():
        raise BadInputError(
            f"no {BEST_FILE}: the run has not validated (validation.every: 0?)", path=str(run_dir)
        )
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError) as err:
        raise BadInputError(f"unreadable ({err})", path=str(pointer)) from None
    found = checkpoints_root(run_dir) / name
    if not found.is_dir():
        raise BadInputError(f"names {name}, which is missing", path=str(pointer))
    return found


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, or the latest checkpoint of a run folder."""
    p = Path(path)
    if CheckpointFolder(p).is_training_checkpoint:
        return p
    found = list_checkpoints(p)
    if not found:
        raise BadInputError(
            f"neither a checkpoint folder (no {TRAINER_STATE}) nor a run folder with checkpoints in "
            f"{CHECKPOINTS_DIR}/",
            path=str(p),
        )
    return found[-1]


def load_torch_file(
    path: Path, *, weights_only: bool = True, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load`` of one checkpoint file; a truncated or damaged file is a :class:`BadInputError` naming it.

    ``weights_only`` (tensors, numbers, containers: no code runs) unless the file holds other objects (the
    per-rank RNG states hold NumPy arrays); those files are the run's own, verified by their checksums.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except FileNotFoundError:
        raise BadInputError("missing from the checkpoint", path=str(path)) from None
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors, ...
        raise BadInputError(
            f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}): the file "
            "is truncated or damaged; use another checkpoint or export again",
            path=str(path),
        ) from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a truncated or damaged file is a :class:`BadInputError`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError (and OSError) on a damaged file
        raise BadInputError(
            f"unreadable ({type(err).__name__}: {err}): the file is truncated or damaged; export again",
            path=str(path),
        ) from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The model's fp32 state dict from an export, a DDP checkpoint or a DeepSpeed checkpoint (ZeRO 0–3)."""
    files = CheckpointFolder(folder)
    if files.export_weights.is_file():
        return load_safetensors(files.export_weights)
    if files.ddp.is_file():
        saved = load_torch_file(files.ddp)
        if not isinstance(saved, dict) or "model" not in saved:
            raise BadInputError(
                "expected a dict with a 'model' state dict", path=str(files.ddp), field="model"
            )
        return saved["model"]
    if files.deepspeed.is_dir():
        return _read_deepspeed(files.deepspeed)
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
    if any(tag_dir.glob(DEEPSPEED_OPTIMIZER_GLOB)):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            return get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=tag_dir.name)
        except Exception as err:  # DeepSpeed raises many types on damaged or missing shards
            raise BadInputError(
                f"cannot join the ZeRO shards ({type(err).__name__}: {err}); the checkpoint is damaged",
                path=str(tag_dir),
            ) from None
    return _read_unpartitioned_deepspeed(tag_dir)


def _read_unpartitioned_deepspeed(tag_dir: Path) -> dict[str, torch.Tensor]:
    """ZeRO-0: the module's weights, replaced by the optimizer's fp32 master copies when it kept them."""
    states = tag_dir / DEEPSPEED_MODEL_STATES
    if not states.is_file():
        raise BadInputError(f"DeepSpeed checkpoint without {DEEPSPEED_MODEL_STATES}", path=str(tag_dir))
    saved = load_torch_file(states, weights_only=False)  # DeepSpeed's own file holds its config objects
    module = dict(saved["module"])
    masters = (saved.get("optimizer") or {}).get("fp32_groups") or []
    params = [k for k in module if k not in set(saved.get("buffer_names", []))]
    if len(masters) == 1 and [t.shape for t in masters[0]] == [module[k].shape for k in params]:
        module.update(zip(params, masters[0], strict=True))
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
