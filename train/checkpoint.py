"""Checkpoints that resume exactly: written to a temporary folder, then renamed; the last K are kept.

What each file of a checkpoint holds, and their names, is :mod:`model.checkpoint_layout`'s.
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

from data_pipeline.atomic_files import fsync_dir, torch_save_atomic, write_text_atomic
from data_pipeline.schema import BadInputError
from model.checkpoint_layout import (
    DAMAGED_PREFIX,
    TMP_PREFIX,
    CheckpointFolder,
    checkpoint_name,
    checkpoints_root,
    list_checkpoints,
    load_torch_file,
    newest_intact_checkpoint,
    universal_checkpoint_dir,
    write_checksums,
)
from train.config import TrainConfig, save_resolved_config
from train.ema import ParameterEMA, consolidate_partitions
from train.engine.base import TrainEngine
from train.engine.distributed import DistContext
from train.tasks.base import Task


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


class CheckpointManager:
    """Saves and restores everything a run needs to continue as if it had never stopped."""

    def __init__(self, run_dir: Path, keep_last: int, ctx: DistContext) -> None:
        self.root = checkpoints_root(run_dir)
        self.keep_last = keep_last
        self.keep: set[str] = set()  # checkpoint names kept beside the last K (the best one)
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
        files = CheckpointFolder(tmp)
        own = {
            "rank": self.ctx.rank,
            "rng": rng_states(),
            "stream": stream.state_dict(),
            "tasks": {task.name: task.state_dict() for task in tasks},
        }
        if ema is not None and ema.partitioned:
            own["ema"] = ema.state_dict()
        torch_save_atomic(own, files.rank(self.ctx.rank))
        if self.ctx.is_main:
            if ema is not None and not ema.partitioned:
                torch_save_atomic(ema.state_dict(), files.ema)
            state = {**trainer_state, "world_size": self.ctx.world_size}
            write_text_atomic(files.trainer_state, json.dumps(state, indent=2))
            save_resolved_config(config, files.run_config)
            write_text_atomic(files.model_config, json.dumps(engine.module.config.to_dict(), indent=2))
        self.ctx.barrier()
        if self.ctx.is_main:
            write_checksums(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.root)
            for old in list_checkpoints(self.root.parent)[: -self.keep_last]:
                if old.name not in self.keep:
                    shutil.rmtree(old)
        self.ctx.barrier()
        return final

    def load(
        self, path: Path, *, engine: TrainEngine, ema: ParameterEMA | None, stream: Any, tasks: list[Task]
    ) -> dict[str, Any]:
        """Restore this rank's share of checkpoint ``path``; returns the trainer state (step counters).

        A checkpoint written by another number of processes is resharded (:meth:`_load_resharded`)."""
        files = CheckpointFolder(path)
        state = json.loads(files.trainer_state.read_text())
        saved_world = int(state["world_size"])
        if saved_world != self.ctx.world_size:
            self._load_resharded(path, saved_world, engine=engine, ema=ema, stream=stream, tasks=tasks)
            return state
        engine.load(
            path, saved_world_size=saved_world, scratch=universal_checkpoint_dir(self.root.parent, path)
        )
        own = load_torch_file(files.rank(self.ctx.rank), weights_only=False)
        stream.load_state_dict(own["stream"])
        for task in tasks:
            if task.name in own["tasks"]:
                task.load_state_dict(own["tasks"][task.name])
        if ema is not None:
            ema.load_state_dict(own["ema"] if ema.partitioned else load_torch_file(files.ema))
        restore_rng_states(own["rng"])
        return state

    def _load_resharded(
        self,
        path: Path,
        saved_world: int,
        *,
        engine: TrainEngine,
        ema: ParameterEMA | None,
        stream: Any,
        tasks: list[Task],
    ) -> None:
        """Resume a checkpoint of ``saved_world`` processes on this run's number: the engine reshards weights
        and optimiser state (DeepSpeed's universal checkpoint; DDP's are replicated), the EMA is joined and
        partitioned again, and the stream gives this rank its share of what the epoch has not delivered.
        Ranks the checkpoint had keep their RNG and task state (the contrast queue); new ranks start theirs."""
        files = CheckpointFolder(path)
        ranks = files.rank_files()
        if len(ranks) != saved_world:
            raise BadInputError(
                f"holds {len(ranks)} rank files, but trainer_state.json says {saved_world} processes wrote it",
                path=str(path),
            )
        if self.ctx.is_main:
            print(
                f"resume: {path.name} was written by {saved_world} processes, this run has "
                f"{self.ctx.world_size}: resharding weights, optimiser state, EMA and the stream",
                flush=True,
            )
        engine.load(
            path, saved_world_size=saved_world, scratch=universal_checkpoint_dir(self.root.parent, path)
        )
        saved = [load_torch_file(files.rank(r), weights_only=False) for r in range(saved_world)]
        try:
            stream.load_resharded([s["stream"] for s in saved])
        except ValueError as err:
            raise BadInputError(str(err), path=str(path), field="data") from None
        own = saved[self.ctx.rank] if self.ctx.rank < saved_world else None
        for task in tasks:
            if own is not None and task.name in own["tasks"]:
                task.load_state_dict(own["tasks"][task.name])
        if ema is not None:
            if ema.partitioned:
                states = [s["ema"] for s in saved]
            else:
                states = [load_torch_file(files.ema)]
            ema.load_consolidated(
                consolidate_partitions(states),
                decay=states[0]["decay"],
                num_updates=states[0]["num_updates"],
                rank=self.ctx.rank,
            )
        if own is not None:
            restore_rng_states(own["rng"])


def intact_resume_point(run_dir: Path, ctx: DistContext) -> Path | None:
    """The newest checkpoint of ``run_dir`` whose files match their checksums (rank 0 decides for all).

    Each newer, damaged one is moved aside to ``damaged-step_*`` (kept for a look, out of the way of the
    last-K retention and of the step's next save), with a line saying which and why. None damaged but none
    intact either is an error: a fresh start would silently drop the run.
    """
    chosen = None
    if ctx.is_main:
        intact, skipped = newest_intact_checkpoint(run_dir)
        for folder, problems in skipped:
            aside = folder.with_name(DAMAGED_PREFIX + folder.name)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(folder, aside)
            print(
                f"resume: skipped damaged checkpoint {folder.name} ({'; '.join(problems)}); moved it to {aside}",
                flush=True,
            )
        if intact is None:
            chosen = BadInputError(
                f"every checkpoint is damaged ({', '.join(f.name for f, _ in skipped)}, moved aside); start a new "
                "run (run.resume: never in another run.out_dir) or restore the checkpoints",
                path=str(checkpoints_root(run_dir)),
            )
        else:
            chosen = str(intact)
            if skipped:
                print(f"resume: resuming from {intact.name}, the newest intact checkpoint", flush=True)
    chosen = ctx.broadcast_object(chosen)
    if isinstance(chosen, BadInputError):
        raise chosen
    return Path(chosen)


def load_ema_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Full fp32 EMA weights of a checkpoint (joining ZeRO-3 partitions from every rank's file)."""
    files = CheckpointFolder(checkpoint)
    if files.ema.is_file():
        return consolidate_partitions([load_torch_file(files.ema)])
    ranks = files.rank_files()
    states = [load_torch_file(r, weights_only=False).get("ema") for r in ranks]
    if not states or any(s is None for s in states):
        raise BadInputError("checkpoint holds no EMA weights (was optim.ema_decay 0?)", path=str(checkpoint))
    return consolidate_partitions(states)
