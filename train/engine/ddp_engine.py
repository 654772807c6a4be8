"""Plain PyTorch DDP engine (``engine: ddp``), for users without DeepSpeed; same config, same checkpoints."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from data_pipeline.atomic_files import torch_save_atomic
from data_pipeline.batch import AtomBatch
from model.checkpoint_layout import CheckpointFolder, load_torch_file
from train.config import TrainConfig
from train.engine.base import global_grad_norm, nonfinite_gradient_ranks, parameter_groups
from train.engine.distributed import DistContext
from train.finetune import optimizer_plan
from train.schedule import WarmupCosine


class DDPEngine:
    """DistributedDataParallel with AdamW, warm-up + cosine, clipping, accumulation (``no_sync`` inside a
    window) and bf16 autocast; rank 0 writes ``<checkpoint>/ddp.pt`` (model, optimiser, scheduler).

    ``find_unused_parameters`` is on: which heads a batch reaches depends on the tasks and the batch.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> None:
        self.ctx = ctx
        self.module = model.to(ctx.device)
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(
            self.module, device_ids=device_ids, find_unused_parameters=True
        )
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.module, o.weight_decay, optimizer_plan(self.module, cfg.finetune)),
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
        )
        self.scheduler = WarmupCosine(
            self.optimizer,
            warmup_steps=o.warmup_steps,
            total_steps=cfg.run.max_steps,
            min_ratio=o.min_lr_ratio,
        )
        self.grad_clip = o.grad_clip
        self.accum = o.grad_accum_steps
        self.autocast = cfg.precision == "bf16"
        self.micro = 0
        self.step_skipped = False
        self.nonfinite_ranks: list[int] = []

    def forward(self, batch: AtomBatch, outputs: tuple[str, ...], conservative: bool) -> dict[str, Tensor]:
        # Gradients are all-reduced in the backward of a forward run outside no_sync: the window's last one.
        sync = contextlib.nullcontext() if self.is_boundary else self.wrapped.no_sync()
        with sync, torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.wrapped(batch, outputs=outputs, conservative=conservative)

    def backward(self, loss: Tensor) -> None:
        (loss / self.accum).backward()

    @property
    def is_boundary(self) -> bool:
        return (self.micro + 1) % self.accum == 0

    def step(self) -> float | None:
        boundary = self.is_boundary
        self.micro += 1
        if not boundary:
            return None
        params = list(self.module.parameters())
        norm = global_grad_norm(params)
        self.nonfinite_ranks = nonfinite_gradient_ranks(
            params, self.ctx.all_reduce_sum, self.ctx.rank, self.ctx.world_size
        )
        self.step_skipped = bool(self.nonfinite_ranks)
        if self.step_skipped:
            self.optimizer.zero_grad(set_to_none=True)
            return norm
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def full_gradients(self) -> dict[str, Tensor]:
        return {
            name: p.grad.detach().float().cpu().clone()
            for name, p in self.module.named_parameters()
            if p.grad is not None
        }

    def save(self, directory: Path) -> None:
        if self.ctx.is_main:
            torch_save_atomic(
                {
                    "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "micro": self.micro,
                },
                CheckpointFolder(directory).ddp,
            )

    def load(self, directory: Path, *, saved_world_size: int, scratch: Path) -> None:
        """DDP state is replicated: any world size loads it as it is."""
        saved = load_torch_file(CheckpointFolder(directory).ddp, map_location=self.ctx.device)
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.micro = int(saved["micro"])
