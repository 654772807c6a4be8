"""Checkpoints that resume exactly: written to a temporary folder, then renamed; the last K are kept.

Layout of ``<out_dir>/checkpoints/step_00000100/``:

| file | written by | holds |
| --- | --- | --- |
| ``ds/`` or ``ddp.pt`` | the engine | model, optimiser, scheduler (DeepSpeed's own layout, ZeRO shards included) |
| ``rank_00000.pt`` … | every rank | RNG states, stream position, task state (contrast queue), ZeRO-3 EMA partition |
| ``ema.pt`` | rank 0 | the EMA weights when they are not partitioned |
| ``trainer_state.json`` | rank 0 | step counters, skipped steps, world size |
| ``config.yaml`` | rank 0 | the resolved run config |
| ``model_config.json`` | rank 0 | what ``model.checkpoint_io.load_model`` rebuilds the model from |

A folder named ``step_*`` is complete by construction: it only gets that name once every rank has written.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.schema import BadInputError
from train.atomic_files import torch_save_atomic, write_text_atomic
from train.config import TrainConfig, save_resolved_config
from train.ema import ParameterEMA, consolidate_partitions
from train.engine.base import TrainEngine
from train.engine.distributed import DistContext
from train.tasks.base import Task

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.pt"
MODEL_CONFIG = "model_config.json"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, or the latest checkpoint of a run folder."""
    p = Path(path)
    if (p / TRAINER_STATE).is_file():
        return p
    found = list_checkpoints(p)
    if not found:
        raise BadInputError(
            "neither a checkpoint folder (no trainer_state.json) nor a run folder with "
            f"checkpoints in {CHECKPOINTS_DIR}/",
            path=str(p),
        )
    return found[-1]


class CheckpointManager:
    """Saves and restores everything a run needs to continue as if it had never stopped."""

    def __init__(self, run_dir: Path, keep_last: int, ctx: DistContext) -> None:
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last
        self.ctx = ctx

    def save(
        self,
        step: int,
        *,
        engine: TrainEngine,
        ema: ParameterEMA | None,
        stream: Any,
        tasks: list[Task],
        trainer_state: dict[str, Any],
        config: TrainConfig,
    ) -> Path:
        """Collective: every rank calls it with its own stream and task state. Returns the final folder."""
        final = self.root / checkpoint_name(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if self.ctx.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.ctx.barrier()
        engine.save(tmp)
        own = {
            "rank": self.ctx.rank,
            "rng": rng_states(),
            "stream": stream.state_dict(),
            "tasks": {task.name: task.state_dict() for task in tasks},
        }
        if ema is not None and ema.partitioned:
            own["ema"] = ema.state_dict()
        torch_save_atomic(own, tmp / rank_file(self.ctx.rank))
        if self.ctx.is_main:
            if ema is not None and not ema.partitioned:
                torch_save_atomic(ema.state_dict(), tmp / EMA_FILE)
            state = {**trainer_state, "world_size": self.ctx.world_size}
            write_text_atomic(tmp / TRAINER_STATE, json.dumps(state, indent=2))
            save_resolved_config(config, tmp / "config.yaml")
            write_text_atomic(tmp / MODEL_CONFIG, json.dumps(engine.module.config.to_dict(), indent=2))
        self.ctx.barrier()
        if self.ctx.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.root)
            for old in list_checkpoints(self.root.parent)[: -self.keep_last]:
                shutil.rmtree(old)
        self.ctx.barrier()
        return final

    def load(
        self, path: Path, *, engine: TrainEngine, ema: ParameterEMA | None, stream: Any, tasks: list[Task]
    ) -> dict[str, Any]:
        """Restore this rank's share of checkpoint ``path``; returns the trainer state (step counters)."""
        state = json.loads((path / TRAINER_STATE).read_text())
        if state["world_size"] != self.ctx.world_size:
            raise BadInputError(
                f"checkpoint was written by {state['world_size']} processes, this run has {self.ctx.world_size}; "
                "resume with the same number of processes (each rank's stream position and ZeRO shards are saved)",
                path=str(path),
            )
        engine.load(path)
        own = torch.load(path / rank_file(self.ctx.rank), map_location="cpu", weights_only=False)
        stream.load_state_dict(own["stream"])
        for task in tasks:
            if task.name in own["tasks"]:
                task.load_state_dict(own["tasks"][task.name])
        if ema is not None:
            ema.load_state_dict(
                own["ema"]
                if ema.partitioned
                else torch.load(path / EMA_FILE, map_location="cpu", weights_only=False)
            )
        restore_rng_states(own["rng"])
        return state


def load_ema_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Full fp32 EMA weights of a checkpoint (joining ZeRO-3 partitions from every rank's file)."""
    if (checkpoint / EMA_FILE).is_file():
        return consolidate_partitions(
            [torch.load(checkpoint / EMA_FILE, map_location="cpu", weights_only=False)]
        )
    ranks = sorted(checkpoint.glob("rank_*.pt"))
    states = [torch.load(r, map_location="cpu", weights_only=False).get("ema") for r in ranks]
    if not states or any(s is None for s in states):
        raise BadInputError("checkpoint holds no EMA weights (was optim.ema_decay 0?)", path=str(checkpoint))
    return consolidate_partitions(states)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
