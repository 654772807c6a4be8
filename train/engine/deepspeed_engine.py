"""DeepSpeed engine: ZeRO 0–3, bf16 autocast or fp32, accumulation, clipping, AdamW with warm-up + cosine.

The DeepSpeed JSON is generated from the run config; ``deepspeed.config`` in the YAML is merged over it for
anything else DeepSpeed offers (offload, bucket sizes, ...). bf16 runs as autocast over fp32 master weights
(DeepSpeed's ``torch_autocast``): the per-element reference energies (hundreds of eV) and the positions stay
in fp32, where a bf16 copy of the weights would round them to whole eV.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from data_pipeline.batch import AtomBatch
from data_pipeline.schema import BadInputError
from model.checkpoint_layout import DEEPSPEED_TAG, CheckpointFolder, load_torch_file
from train.config import TrainConfig
from train.engine.base import global_grad_norm, nonfinite_gradient_ranks, parameter_groups
from train.engine.distributed import DistContext
from train.finetune import optimizer_plan
from train.schedule import WarmupCosine


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for this run (before the user's ``deepspeed.config`` is merged over it)."""
    o = cfg.optim
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # one packed batch (an atom budget, not a count) per micro-step
        "gradient_accumulation_steps": o.grad_accum_steps,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                "torch_adam": True,
            },
        },
        "torch_autocast": {"enabled": cfg.precision == "bf16", "dtype": "bfloat16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return merge(generated, cfg.deepspeed.config)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


class DeepSpeedEngine:
    """Wraps ``deepspeed.initialize``; checkpoints go to ``<checkpoint>/ds`` (DeepSpeed's own layout)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> None:
        import deepspeed

        self.ctx = ctx
        self.stage = cfg.deepspeed.zero_stage
        o = cfg.optim

        def scheduler(optimizer: torch.optim.Optimizer) -> WarmupCosine:
            return WarmupCosine(
                optimizer,
                warmup_steps=o.warmup_steps,
                total_steps=cfg.run.max_steps,
                min_ratio=o.min_lr_ratio,
            )

        self.engine, _, _, _ = deepspeed.initialize(
            model=model.to(ctx.device),
            model_parameters=parameter_groups(model, o.weight_decay, optimizer_plan(model, cfg.finetune)),
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg),
            dist_init_required=False,
        )
        self.module = self.engine.module
        self.step_skipped = False
        self.nonfinite_ranks: list[int] = []

    def forward(self, batch: AtomBatch, outputs: tuple[str, ...], conservative: bool) -> dict[str, Tensor]:
        return self.engine(batch, outputs=outputs, conservative=conservative)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss)

    @property
    def is_boundary(self) -> bool:
        return bool(self.engine.is_gradient_accumulation_boundary())

    def step(self) -> float | None:
        """ZeRO 1–3 skip an update whose global gradient norm is not finite themselves (on every rank: the norm
        is all-reduced); under ZeRO-0 the ranks compare their reduced gradients first, and a skipped update
        leaves the optimiser and the schedule as they were."""
        boundary = self.is_boundary
        if not boundary:
            self.engine.step()
            return None
        norm = None
        self.nonfinite_ranks = []
        if self.stage == 0:
            params = list(self.module.parameters())
            norm = global_grad_norm(params)
            self.nonfinite_ranks = nonfinite_gradient_ranks(
                params, self.ctx.all_reduce_sum, self.ctx.rank, self.ctx.world_size
            )
        if self.nonfinite_ranks:
            schedule = self.engine.lr_scheduler.state_dict()
            for p in self.module.parameters():
                p.grad = None
            self.engine.step()
            self.engine.lr_scheduler.load_state_dict(schedule)
        else:
            self.engine.step()
        self.step_skipped = bool(self.nonfinite_ranks) or not self.engine.was_step_applied()
        if norm is None:
            value = self.engine.get_global_grad_norm()
            norm = None if value is None else float(value)
        return norm

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def full_gradients(self) -> dict[str, Tensor]:
        from deepspeed.utils import safe_get_full_grad

        out = {}
        for name, p in self.module.named_parameters():
            grad = safe_get_full_grad(p)
            if grad is not None:
                out[name] = grad.detach().float().cpu().clone()
        return out

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(CheckpointFolder(directory).deepspeed), tag=DEEPSPEED_TAG)

    def load(self, directory: Path, *, saved_world_size: int, scratch: Path) -> None:
        """DeepSpeed's own load; a ZeRO 1–3 checkpoint of another world size goes through DeepSpeed's
        universal checkpoint: rank 0 converts it (``ds_to_universal``: per-parameter fp32 weights and Adam
        moments) into ``scratch``, every rank loads its new partition from there, and ``scratch`` is removed.
        ZeRO-0 state is replicated and loads as it is."""
        ds_dir = CheckpointFolder(directory).deepspeed
        if saved_world_size == self.ctx.world_size or self.stage == 0:
            self._load(ds_dir)
            return
        if self.ctx.is_main:
            to_universal(ds_dir, scratch)
        self.ctx.barrier()
        config = self.engine._config
        config.load_universal_checkpoint = True
        try:
            self._load(scratch)
        finally:
            config.load_universal_checkpoint = False
        self._load_buffers(ds_dir / DEEPSPEED_TAG)
        self.ctx.barrier()
        if self.ctx.is_main:
            shutil.rmtree(scratch, ignore_errors=True)

    def _load_buffers(self, tag_dir: Path) -> None:
        """The module's persistent buffers (the reference energies), which a universal checkpoint leaves out:
        from the module file DeepSpeed wrote (ZeRO-1/2: ``mp_rank_00_model_states.pt``; ZeRO-3: rank 0's)."""
        names = set(self.module.state_dict()) - {name for name, _ in self.module.named_parameters()}
        if not names:
            return
        (states, *_) = sorted(tag_dir.glob("*model_states.pt"))
        saved = load_torch_file(states, weights_only=False)["module"]  # DeepSpeed's file holds its objects
        with torch.no_grad():
            for name, buffer in self.module.named_buffers():
                if name in names and name in saved:
                    buffer.copy_(saved[name])

    def _load(self, ds_dir: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(ds_dir), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {ds_dir}")


def to_universal(ds_dir: Path, out: Path) -> None:
    """DeepSpeed's universal checkpoint of ``ds_dir`` (tag ``state``) in ``out`` (replaced), its output quiet."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shutil.rmtree(out, ignore_errors=True)
    args = Namespace(
        input_folder=str(ds_dir / DEEPSPEED_TAG),
        output_folder=str(out / DEEPSPEED_TAG),
        num_extract_workers=max(1, min(4, os.cpu_count() or 1)),
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            ds_to_universal(args)
    except Exception as err:  # DeepSpeed raises many types on a checkpoint it cannot convert
        shutil.rmtree(out, ignore_errors=True)
        raise BadInputError(
            f"cannot convert the ZeRO state to DeepSpeed's universal checkpoint for a resume on another world "
            f"size ({type(err).__name__}: {err}); resume with the number of processes that wrote it",
            path=str(ds_dir),
        ) from None
