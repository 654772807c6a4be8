"""The training loop: stream → corrupt → forward → per-domain balanced losses → engine step → EMA, logs, checkpoints.

One optimiser step takes ``optim.grad_accum_steps`` finite micro-batches. A micro-batch whose loss is
non-finite on any rank is dropped by every rank (no backward; the next batch takes its place) and counted; so
is a step whose gradients are non-finite on any rank (every rank skips the update, and the step is made again);
``run.max_nonfinite_in_row`` of them in a row save a checkpoint and stop the run with a clear message. Each phase
of a step is timed (``train.watchdog``): a rank stuck in one past ``distributed.collective_timeout_s`` says so and
exits.
SIGUSR1 or SIGTERM to a training process, or a file ``<out_dir>/STOP`` (what the SLURM template creates before
the time limit), saves a checkpoint at the next step and stops every rank.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.atomic_files import output_folder, torch_save_atomic, write_text_atomic
from data_pipeline.batch import AtomBatch
from data_pipeline.folder_lock import folder_lock
from data_pipeline.schema import BadInputError
from data_pipeline.stream import StreamStarvedError, StructureStream, starved_message
from model.atomfm import AtomFM
from model.checkpoint_layout import (
    BEST_FILE,
    RUN_CONFIG,
    CheckpointFolder,
    checkpoint_name,
    checkpoints_root,
    list_checkpoints,
    resolve_checkpoint,
    verify_checkpoint,
)
from model.coverage import TrainingCoverage, batch_coverage
from train.checkpoint import CheckpointManager, intact_resume_point
from train.config import ConfigOrigin, TrainConfig, save_resolved_config
from train.engine import TrainEngine, build_engine
from train.engine.distributed import DistContext
from train.finetune import reinit_heads
from train.logging import RunLogger, peak_memory_gib
from train.loss_balance import BalancedLoss, balance_losses
from train.replay import PseudoLabeller
from train.run_setup import (
    build_ema,
    build_model,
    build_stream,
    fit_property_statistics,
    fit_reference_energies,
    load_initial_weights,
    model_stream_config,
    new_property_head,
)
from train.tasks import CorruptionState, Task, build_tasks
from train.validation import Validator
from train.watchdog import StepWatchdog

GRADIENTS_FILE = "gradients_step_{step}.pt"
SAMPLE_KEYS_FILE = "sample_keys/rank_{rank:05d}.jsonl"  # debug.log_sample_keys
STOP_FILE = "STOP"  # created by a user or a job script: checkpoint at the next step and stop
RUN_LOCK = ".train.lock"  # held by rank 0 while a run writes its folder


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run stopped after saving a checkpoint."""


class StopWhileWaiting(Exception):
    """A stop signal reached the run while it waited for data, and no batch came within ``run.stop_wait_s``."""


@dataclass
class TrainerState:
    """Counters that make a run resumable; saved in every checkpoint's trainer_state.json."""

    step: int = 0  # optimiser steps taken
    micro_batches: int = 0  # finite micro-batches trained on (this rank)
    nonfinite_skipped: int = 0
    nonfinite_in_row: int = 0
    atoms_seen: int = 0  # all ranks
    structures_seen: int = 0  # all ranks
    best_value: float | None = None  # the validation metric's best value so far (validation.metric)
    best_step: int | None = None
    validations_since_best: int = 0
    # the model's training coverage, this rank's (all ranks' at a save): elements, shortest distance (Å)
    elements_seen: list[int] = field(default_factory=list)
    shortest_distance: float | None = None


@dataclass
class TrainResult:
    state: TrainerState
    checkpoint: Path | None
    stopped_by: (
        str  # "max_steps" | "signal" (a signal or the STOP file) | "time_limit" | "nonfinite" | "early_stop"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flush_denormals() -> None:
    """Subnormal floats (below 1.2e-38 in float32) read and written as zero by this thread's CPU arithmetic.

    A training step makes some (a Gaussian radial feature far from its centre, a vanishing activation
    derivative, their products in the double backward), and an x86 core takes a slow path on each: a batch
    with many ran the S² grid's matmuls 10x slower. Measured on the demo product's conservative step, both
    ways interleaved in one process: 526 -> 482 ms a step. Values change by less than 1.2e-38; the autograd
    backward of a CPU tensor runs on this thread too. No effect on GPUs.
    """
    torch.set_flush_denormal(True)


def endless(stream: StructureStream) -> Iterator[Any]:
    """Batches of ``stream``, starting its next epoch whenever one ends (``repeat: false`` corpora)."""
    while True:
        delivered = 0
        before = Counter(stream.stats.skipped_samples)
        for batch in stream:
            delivered += 1
            yield batch
        if delivered == 0:
            skipped = Counter(stream.stats.skipped_samples) - before
            raise StreamStarvedError(
                starved_message(stream, skipped)
                if skipped
                else f"the stream of rank {stream.rank} delivered no batch in a whole epoch: its share of the "
                "corpus is empty (fewer structures than ranks?)",
                field="data",
            )


def requested_outputs(tasks: list[Task]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(o for task in tasks for o in task.outputs))


def micro_batch_loss(
    forward: Callable[..., dict[str, torch.Tensor]],
    batch: AtomBatch,
    tasks: list[Task],
    ctx: DistContext,
    *,
    seed: int,
    step: int,
    micro: int,
    conservative: bool,
    stop_requested: bool = False,
    poison: bool = False,
) -> BalancedLoss:
    """Corrupt ``batch`` in place, run ``forward(batch, outputs, conservative)`` and balance the tasks' losses.

    One all-reduce (over ``ctx``) carries the per-domain counts and sums, the batch's atoms and structures
    (``extra[0:2]``) and whether any rank was asked to stop (``extra[2]``). ``poison`` makes this rank's loss
    NaN, as a NaN output would (testing the non-finite skip).
    """
    corruption = CorruptionState.for_batch(batch, seed=seed, step=step, micro=micro)
    for task in tasks:
        task.corrupt(batch, corruption)
    out = forward(batch, requested_outputs(tasks), conservative)
    terms = {task.name: task.loss_terms(batch, out, corruption) for task in tasks}
    anchor = sum(o.sum() for o in out.values() if o.is_floating_point())
    if poison:
        anchor = anchor * float("nan")
    extra = torch.tensor([batch.num_nodes, batch.num_graphs, float(stop_requested)], dtype=torch.float64)
    weights = {task.name: task.weight for task in tasks}
    domain_weights = {t.name: t.settings.domain_weight_vector() for t in tasks if t.settings.domain_weights}
    return balance_losses(
        terms,
        weights,
        world_size=ctx.world_size,
        all_reduce_sum=ctx.all_reduce_sum,
        extra=extra,
        anchor=anchor,
        domain_weights=domain_weights,
    )


class Trainer:
    """Builds everything a run needs from its config and runs it; ``run()`` returns a :class:`TrainResult`."""

    def __init__(
        self, cfg: TrainConfig, ctx: DistContext, *, resume: str | None = None, use_wandb: bool = True
    ) -> None:
        self.cfg, self.ctx = cfg, ctx
        self._lock = ExitStack()
        self._lock_run_folder()
        try:
            self._build(resume, use_wandb)
        except BaseException:
            self.close()
            raise

    def _lock_run_folder(self) -> None:
        """Rank 0 holds ``<out_dir>/.train.lock`` for the run: a second training of the same folder is refused
        (on every rank) instead of interleaving its checkpoints with this one's."""
        problem = None
        if self.ctx.is_main:
            try:
                output_folder(self.cfg.run_dir)
                self._lock.enter_context(
                    folder_lock(
                        self.cfg.run_dir,
                        RUN_LOCK,
                        "another training is writing this run.out_dir; wait for it to finish, or choose another "
                        "run.out_dir",
                    )
                )
            except BadInputError as err:
                problem = err
        message = self.ctx.broadcast_object(None if problem is None else str(problem))
        if problem is not None:
            raise problem
        if message is not None:
            raise BadInputError(message)

    def close(self) -> None:
        """Release the run folder's lock; stop the watchdog."""
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.close()
        self._lock.close()

    def _build(self, resume: str | None, use_wandb: bool) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.tasks = build_tasks(cfg.tasks, ConfigOrigin("config"))
        self.state = TrainerState()
        self.stop_signal = False
        self._waiting = False  # waiting for data: a stop signal gives the batch run.stop_wait_s to come
        self._alarm: Any = None  # the SIGALRM handler before a stop signal armed ours (None: not armed)
        self.time_up = False
        self.started = time.monotonic()
        self._last_saved: Path | None = None
        self._poisoned = False  # debug.poison_gradients_at_step has fired
        # what the latest non-finite skip was for: "loss" (a micro-batch) or "gradients" (a step)
        self._nonfinite = "loss"
        resume_from = self._checkpoint_to_resume(resume)

        seed_everything(cfg.run.seed)
        flush_denormals()
        model = build_model(cfg)
        self._base_coverage: TrainingCoverage | None = None  # what the weights started from were trained on
        fresh: list[str] | None = None  # tensors the initial weights lacked (None: no weights loaded)
        if resume_from is None and cfg.model.init_from:
            fresh = load_initial_weights(model, cfg.model.init_from)
            self._base_coverage = model.config.coverage
            reinit_heads(model, cfg.finetune.reinit_heads)
            if ctx.is_main:
                print(
                    f"started from the weights of {cfg.model.init_from}"
                    + (f"; {len(fresh)} tensors not in it keep their initialisation" if fresh else ""),
                    flush=True,
                )
        if resume_from is None and cfg.model.fit_reference_energies:
            self._fit_reference_energies(model)
        if resume_from is None and new_property_head(model, fresh, cfg.finetune.reinit_heads):
            fit_property_statistics(model, cfg.data, ctx)
        self.stream = build_stream(model_stream_config(cfg.data, model, cfg.finetune.replay), ctx)
        replay = cfg.finetune.replay
        self.pseudo_labels = (
            PseudoLabeller.from_checkpoint(cfg.model.init_from, ctx.device)
            if replay.active and replay.pseudo_label
            else None
        )
        self.engine: TrainEngine = build_engine(model, cfg, ctx)
        self.ema = build_ema(self.engine.module, cfg.optim.ema_decay)
        self.checkpoints = CheckpointManager(cfg.run_dir, cfg.run.keep_last, ctx)
        self.validator = Validator(cfg.validation, cfg.data, ctx) if cfg.validation.every else None
        seed_everything(cfg.run.seed + 7919 * (ctx.rank + 1))
        if resume_from is not None:
            saved = self.checkpoints.load(
                resume_from, engine=self.engine, ema=self.ema, stream=self.stream, tasks=self.tasks
            )
            self.state = TrainerState(**{k: saved[k] for k in asdict(self.state) if k in saved})
            self._last_saved = resume_from
        if self.state.best_step is not None:
            self.checkpoints.keep.add(checkpoint_name(self.state.best_step))
        if ctx.is_main:
            save_resolved_config(cfg, cfg.run_dir / RUN_CONFIG)
            (cfg.run_dir / STOP_FILE).unlink(
                missing_ok=True
            )  # a stale one, from a run killed before it stopped
        self.logger = RunLogger(cfg, is_main=ctx.is_main, start_step=self.state.step, use_wandb=use_wandb)
        self.watchdog = StepWatchdog(cfg.distributed.watchdog_s if ctx.world_size > 1 else None, ctx.rank)
        if resume_from is not None:
            self.logger.message(f"resumed from {resume_from} at step {self.state.step}")

    def _checkpoint_to_resume(self, resume: str | None) -> Path | None:
        """``resume`` (CLI) wins over ``run.resume``: auto = latest if any, never = fresh, else a folder."""
        choice = resume if resume is not None else self.cfg.run.resume
        existing = list_checkpoints(self.cfg.run_dir)
        if choice == "never":
            if existing:
                raise BadInputError(
                    f"already holds checkpoints ({existing[-1].name}); resume it (run.resume: auto or "
                    "--resume) or choose another run.out_dir",
                    path=str(self.cfg.run_dir),
                )
            return None
        if choice == "latest" and not existing:
            raise BadInputError("--resume: no checkpoint to resume from", path=str(self.cfg.run_dir))
        if choice in ("auto", "latest"):
            return intact_resume_point(self.cfg.run_dir, self.ctx) if existing else None
        chosen = Path(choice)
        if not CheckpointFolder(chosen).is_training_checkpoint and list_checkpoints(chosen):
            return intact_resume_point(chosen, self.ctx)
        folder = resolve_checkpoint(chosen)
        verify_checkpoint(folder)
        return folder

    def _fit_reference_energies(self, model: AtomFM) -> None:
        pretrained = bool(self.cfg.model.init_from)
        fit = fit_reference_energies(
            model,
            self.cfg.data,
            self.ctx,
            keep_known_levels=pretrained,
            ridge=self.cfg.model.reference_ridge,
            held_out_split=self.cfg.validation.split,
        )
        if self.ctx.is_main:
            ridge = ", ".join(f"{level} {lam:g}" for level, lam in (fit.ridge or {}).items())
            print(
                f"reference energies fitted on {fit.structures} labelled structures"
                + (f" (ridge per level: {ridge})" if ridge else "")
                + (f" ({fit.skipped} undecodable samples skipped)" if fit.skipped else ""),
                flush=True,
            )

    def stop_requested(self) -> bool:
        """A signal reached this process, ``run.max_time_s`` is spent, or (rank 0) someone created
        ``<out_dir>/STOP``."""
        budget = self.cfg.run.max_time_s
        if budget is not None and time.monotonic() - self.started > budget:
            self.time_up = True
        return (
            self.stop_signal or self.time_up or (self.ctx.is_main and (self.cfg.run_dir / STOP_FILE).exists())
        )

    def install_signal_handlers(self) -> None:
        """SIGUSR1 and SIGTERM stop the run at the next step, with a checkpoint. One that comes while the run
        waits for data gives the batch ``run.stop_wait_s`` to come (then the step and its checkpoint follow);
        a stream stuck for longer, or a second signal, stops the run at once without a checkpoint."""

        def request_stop(signum: int, frame: Any) -> None:
            repeated, self.stop_signal = self.stop_signal, True
            if not self._waiting:
                return
            if repeated:
                self._stop_now(f"{signal.Signals(signum).name} received twice")
            if self._alarm is None:
                self._alarm = signal.signal(signal.SIGALRM, lambda *_: self._stop_now(waited))
                signal.setitimer(signal.ITIMER_REAL, self.cfg.run.stop_wait_s)

        waited = (
            f"a stop signal received, and no batch came within run.stop_wait_s={self.cfg.run.stop_wait_s:g} s"
        )
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, request_stop)

    def _stop_now(self, reason: str) -> None:
        if self._waiting:
            self._waiting = False
            raise StopWhileWaiting(reason)

    @contextmanager
    def _waiting_for_data(self) -> Iterator[None]:
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False
            if self._alarm is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, self._alarm)
                self._alarm = None

    def run(self) -> TrainResult:
        st = self.state
        try:
            stopped_by, last_checkpoint = self._steps()
        except StopWhileWaiting as stop:
            stopped_by, last_checkpoint = "signal", self._last_saved
            self.logger.message(
                f"{stop} while waiting for data at step {st.step}: stopping without a new checkpoint; the last "
                f"one is {last_checkpoint}"
            )
        self.logger.close()
        if stopped_by == "nonfinite":
            raise NonFiniteLossError(
                f"non-finite {self._nonfinite} in {st.nonfinite_in_row} "
                f"{'micro-batches' if self._nonfinite == 'loss' else 'steps'} in a row at step {st.step} (limit "
                f"run.max_nonfinite_in_row={self.cfg.run.max_nonfinite_in_row}); saved {self._last_saved}. "
                "Lower optim.lr, check the corpus labels (atomfm data inspect), or raise the limit"
            )
        return TrainResult(state=st, checkpoint=last_checkpoint, stopped_by=stopped_by)

    def _steps(self) -> tuple[str, Path | None]:
        """The training loop; returns how it stopped and the last checkpoint."""
        cfg, ctx, st = self.cfg, self.ctx, self.state
        batches = endless(self.stream)
        window = MetricWindow()
        stopped_by, last_checkpoint = "max_steps", self._last_saved
        micro_in_step = 0
        while st.step < cfg.run.max_steps:
            with self._waiting_for_data():
                batch = next(batches)
            if cfg.debug.log_sample_keys:
                self._log_sample_keys(batch)
            self._cover(batch)
            batch = batch.to(ctx.device)
            if self.pseudo_labels is not None:
                self.pseudo_labels(batch)
            poison = cfg.debug.poison_loss_at_step == st.step and ctx.is_main and micro_in_step == 0
            self._injected_hang(st.step)
            with self.watchdog.phase(
                f"the forward pass and loss all-reduce of micro-batch {micro_in_step}", st.step
            ):
                loss = micro_batch_loss(
                    self.engine.forward,
                    batch,
                    self.tasks,
                    ctx,
                    seed=cfg.run.seed,
                    step=st.step,
                    micro=micro_in_step,
                    conservative=cfg.model.conservative_forces,
                    stop_requested=self.stop_requested(),
                    poison=poison,
                )
            micro_in_step += 1
            if not loss.finite:
                if self._skip_nonfinite(loss):
                    stopped_by = "nonfinite"
                    break
                continue
            boundary = self.engine.is_boundary
            if (
                boundary
                and cfg.debug.poison_gradients_at_step == st.step
                and ctx.is_main
                and not self._poisoned
            ):
                self._poisoned = True  # once: the step made again is left alone
                loss.total.register_hook(lambda grad: grad * float("nan"))
            with self.watchdog.phase("the backward pass and gradient reduction", st.step):
                self.engine.backward(loss.total)
            if boundary and cfg.debug.dump_gradients_at_step == st.step:
                self._dump_gradients()
            with self.watchdog.phase("the optimiser step", st.step):
                grad_norm = self.engine.step()
            st.micro_batches += 1
            st.atoms_seen += int(loss.extra[0])
            st.structures_seen += int(loss.extra[1])
            if not boundary:
                window.add(loss, grad_norm)
                continue
            micro_in_step = 0
            if self.engine.step_skipped:
                if self._skip_nonfinite_gradients():
                    stopped_by = "nonfinite"
                    break
                continue
            window.add(loss, grad_norm)
            st.nonfinite_in_row = 0
            st.step += 1
            if self.ema is not None:
                self.ema.update(self.engine.module)
            self.logger.advance()
            if st.step % cfg.run.log_every == 0 or st.step == cfg.run.max_steps:
                self._log(window)
                window = MetricWindow()
            stopping = bool(loss.extra[2] > 0)
            improved = early_stop = False
            if self.validator is not None and (
                st.step % cfg.validation.every == 0 or st.step == cfg.run.max_steps
            ):
                with self.watchdog.phase("validation", st.step):
                    improved, early_stop = self._validate()
            if (
                st.step % cfg.run.checkpoint_every == 0
                or st.step == cfg.run.max_steps
                or stopping
                or improved
                or early_stop
            ):
                with self.watchdog.phase("saving a checkpoint", st.step):
                    last_checkpoint = self._save()
            if improved and ctx.is_main:
                self._point_to_best(last_checkpoint)
            if early_stop:
                stopped_by = "early_stop"
                self.logger.message(
                    f"early stop: {cfg.validation.metric} has not improved in {cfg.validation.patience} "
                    f"validations (best {st.best_value:.4g} at step {st.best_step}); saved {last_checkpoint}"
                )
                break
            if stopping:
                stopped_by = "time_limit" if self.time_up else "signal"
                if ctx.is_main:
                    (cfg.run_dir / STOP_FILE).unlink(missing_ok=True)
                reason = f"run.max_time_s={cfg.run.max_time_s} s spent" if self.time_up else "stop requested"
                self.logger.message(f"{reason}: saved {last_checkpoint}, stopping")
                break
        return stopped_by, last_checkpoint

    def _validate(self) -> tuple[bool, bool]:
        """Score the val split, log it, track the best; returns (new best, stop early)."""
        st, vcfg = self.state, self.cfg.validation
        forces = "conservative" if self.cfg.model.conservative_forces else "direct"
        metrics = self.validator.score(self.engine.module, forces)
        value = metrics.get(vcfg.metric)
        improved = value is not None and (st.best_value is None or value < st.best_value)
        if improved:
            st.best_value, st.best_step, st.validations_since_best = value, st.step, 0
            self.checkpoints.keep = {checkpoint_name(st.step)}
        else:
            st.validations_since_best += 1
        self.logger.validation(st.step, metrics, vcfg.metric, st.best_value, st.best_step)
        return improved, bool(vcfg.patience) and st.validations_since_best >= vcfg.patience

    def _point_to_best(self, checkpoint: Path) -> None:
        st = self.state
        record = {
            "checkpoint": checkpoint.name,
            "step": st.best_step,
            "metric": self.cfg.validation.metric,
            "value": st.best_value,
        }
        write_text_atomic(checkpoints_root(self.cfg.run_dir) / BEST_FILE, json.dumps(record, indent=1))

    def _skip_nonfinite(self, loss: BalancedLoss) -> bool:
        """Count a dropped micro-batch; True when the run must stop (a checkpoint is saved first)."""
        st = self.state
        st.nonfinite_skipped += 1
        st.nonfinite_in_row += 1
        self._nonfinite = "loss"
        bad = {name: value for name, value in loss.per_task.items() if not np.isfinite(value)}
        self.logger.message(
            f"step {st.step}: non-finite loss ({bad or 'total'}), batch skipped "
            f"({st.nonfinite_in_row} in a row, {st.nonfinite_skipped} in all)"
        )
        if st.nonfinite_in_row < self.cfg.run.max_nonfinite_in_row:
            return False
        self._last_saved = self._save()
        return True

    def _skip_nonfinite_gradients(self) -> bool:
        """Count an optimiser step every rank skipped for non-finite gradients (its micro-batches are dropped,
        the next ones make the step again); True when the run must stop (a checkpoint is saved first)."""
        st = self.state
        st.nonfinite_skipped += 1
        st.nonfinite_in_row += 1
        self._nonfinite = "gradients"
        ranks = self.engine.nonfinite_ranks
        where = f"on rank {', '.join(map(str, ranks))}" if ranks else "in the global gradient norm"
        self.logger.message(
            f"step {st.step}: non-finite gradients ({where}), the optimiser step is skipped on every rank "
            f"({st.nonfinite_in_row} in a row, {st.nonfinite_skipped} in all)"
        )
        if st.nonfinite_in_row < self.cfg.run.max_nonfinite_in_row:
            return False
        self._last_saved = self._save()
        return True

    def _injected_hang(self, step: int) -> None:
        """Fault injection (``debug.hang_rank`` / ``debug.hang_at_step``): this rank sleeps, as a hung one."""
        debug = self.cfg.debug
        if debug.hang_at_step == step and debug.hang_rank == self.ctx.rank:
            with self.watchdog.phase("a sleep injected by debug.hang_rank (fault injection)", step):
                time.sleep(debug.hang_s)

    def _cover(self, batch: AtomBatch) -> None:
        """Add what ``batch`` holds (before corruption) to this rank's training coverage."""
        seen = batch_coverage(batch).merged(
            TrainingCoverage(self.state.elements_seen, self.state.shortest_distance)
        )
        self.state.elements_seen, self.state.shortest_distance = seen.elements, seen.shortest_distance

    def _save(self) -> Path:
        coverage = self._base_coverage
        for elements, shortest in self.ctx.all_gather_object(
            (self.state.elements_seen, self.state.shortest_distance)
        ):
            coverage = TrainingCoverage(elements, shortest).merged(coverage)
        self.state.elements_seen, self.state.shortest_distance = coverage.elements, coverage.shortest_distance
        self.engine.module.config.coverage = coverage
        path = self.checkpoints.save(
            self.state.step,
            engine=self.engine,
            ema=self.ema,
            stream=self.stream,
            tasks=self.tasks,
            trainer_state=asdict(self.state),
            config=self.cfg,
        )
        self._last_saved = path
        return path

    def _log_sample_keys(self, batch: AtomBatch) -> None:
        """Debug: which structures this rank was given, at which step and stream epoch (checks of the stream
        across resumes and world sizes)."""
        path = self.cfg.run_dir / SAMPLE_KEYS_FILE.format(rank=self.ctx.rank)
        path.parent.mkdir(exist_ok=True)
        record = {"step": self.state.step, "epoch": self.stream.epoch, "world_size": self.ctx.world_size}
        with open(path, "a") as handle:
            handle.write(json.dumps({**record, "keys": list(batch.key)}) + "\n")

    def _dump_gradients(self) -> None:
        """Debug: write this step's reduced gradients (rank 0) for comparison across process counts."""
        grads = self.engine.full_gradients()
        if self.ctx.is_main:
            torch_save_atomic(grads, self.cfg.run_dir / GRADIENTS_FILE.format(step=self.state.step))

    def _log(self, window: MetricWindow) -> None:
        metrics = window.summary()
        metrics["lr"] = self.engine.lr()
        metrics["memory_gib"] = peak_memory_gib(self.ctx.device)
        metrics["nonfinite_skipped"] = self.state.nonfinite_skipped
        stats = self.stream.stats
        metrics["stream_skipped"] = sum(stats.skipped_samples.values())
        self.logger.log(self.state.step, metrics)


class MetricWindow:
    """Averages of the finite micro-batches since the last log line, and throughput over its wall time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.count = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.atoms = self.structures = 0.0
        self.grad_norms: list[float] = []

    def add(self, loss: BalancedLoss, grad_norm: float | None) -> None:
        self.count += 1
        values = {"loss": loss.value}
        for task, value in loss.per_task.items():
            values[f"loss/{task}"] = value
            for domain, v in loss.per_task_domain[task].items():
                values[f"loss/{task}/{domain}"] = v
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.atoms += float(loss.extra[0])
        self.structures += float(loss.extra[1])
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {key: self.sums[key] / self.counts[key] for key in self.sums}
        out["atoms"] = self.atoms
        out["window_s"] = elapsed
        out["atoms_per_s"] = self.atoms / elapsed
        out["structures_per_s"] = self.structures / elapsed
        if self.grad_norms:
            out["grad_norm"] = float(np.mean(self.grad_norms))
        return out


def train(
    cfg: TrainConfig, ctx: DistContext, *, resume: str | None = None, use_wandb: bool = True
) -> TrainResult:
    """Run ``cfg`` on this process's rank (the process group must be up: see ``train.cli``)."""
    trainer = Trainer(cfg, ctx, resume=resume, use_wandb=use_wandb)
    try:
        trainer.install_signal_handlers()
        result = trainer.run()
    finally:
        trainer.close()
    if ctx.is_main:
        print(
            json.dumps(
                {"finished": result.stopped_by, **asdict(result.state), "checkpoint": str(result.checkpoint)}
            ),
            flush=True,
        )
    return result
