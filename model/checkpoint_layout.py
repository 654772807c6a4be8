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
| ``checksums.json`` | rank 0 | size and sha256 of every other file, written last |

An export folder holds ``model.safetensors`` (fp32), ``model_config.json`` and ``checksums.json``. A folder
named ``step_*`` is complete by construction: it gets that name (from ``.tmp-step_*``) only once every rank has
written. What happens to it later (a flipped bit, a truncated or deleted file) :func:`checkpoint_damage` finds
from its checksums, as DeepSpeed does not: resuming skips a damaged checkpoint for the newest intact one, and
export and loading refuse it, naming the file. A folder without ``checksums.json`` was written before checksums
and is read unverified.
"""

from __future__ import annotations

import hashlib
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
CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "atomfm-checksums"
DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint moved aside by a resume (not a step_* folder any more)
UNIVERSAL_PREFIX = ".universal-"  # DeepSpeed's universal form of a checkpoint, while a resume reshards it


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
    def checksums(self) -> Path:
        return self.path / CHECKSUMS_FILE

    @property
    def is_training_checkpoint(self) -> bool:
        return self.trainer_state.is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def write_checksums(folder: Path, names: list[str] | None = None) -> Path:
    """Record the size and sha256 of the files ``names`` of ``folder`` (default: every file below it) in its
    ``checksums.json``, written last."""
    from data_pipeline.atomic_files import write_text_atomic

    paths = _files_below(folder) if names is None else [folder / name for name in names]
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in paths}
    record = {"format": CHECKSUMS_FORMAT, "files": files}
    return write_text_atomic(CheckpointFolder(folder).checksums, json.dumps(record, indent=1))


def checkpoint_damage(folder: Path) -> list[str] | None:
    """What is wrong with ``folder`` by its checksums (``[]``: intact), or None when it has none to check."""
    pointer = CheckpointFolder(folder).checksums
    if not pointer.is_file():
        return None
    try:
        record = json.loads(pointer.read_text())
        listed = record["files"]
        if record.get("format") != CHECKSUMS_FORMAT or not isinstance(listed, dict):
            raise ValueError("not an atomfm checksum record")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{CHECKSUMS_FILE} is unreadable ({err})"]
    problems = []
    for name, expected in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected.get("bytes"):
            problems.append(f"{name} has {path.stat().st_size} bytes, {expected.get('bytes')} when written")
        elif _sha256(path) != expected.get("sha256"):
            problems.append(f"{name} fails its sha256 checksum (a changed or flipped byte)")
    return problems


def verify_checkpoint(folder: Path) -> None:
    """Raise :class:`BadInputError` naming the first damaged file of ``folder`` (unverifiable folders pass)."""
    problems = checkpoint_damage(folder)
    if problems:
        raise BadInputError(
            f"damaged: {'; '.join(problems)}; use another checkpoint (`ls {folder.parent}`)", path=str(folder)
        )


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest checkpoint of a run whose files match their checksums, and the newer ones that do not
    (each with what is wrong), newest first."""
    skipped = []
    for folder in reversed(list_checkpoints(run_dir)):
        problems = checkpoint_damage(folder)
        if not problems:
            return folder, skipped
        skipped.append((folder, problems))
    return None, skipped


def universal_checkpoint_dir(run_dir: str | os.PathLike, checkpoint: Path) -> Path:
    """Where a resume on another world size writes ``checkpoint``'s DeepSpeed state in DeepSpeed's universal
    form (``ds_to_universal``): beside the run's checkpoints, never listed as one, removed once loaded."""
    return checkpoints_root(run_dir) / f"{UNIVERSAL_PREFIX}{checkpoint.name}"


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
