"""DeepSpeed engine: ZeRO 0–3, bf16 autocast or fp32, accumulation, clipping, AdamW with warm-up + cosine.

The DeepSpeed JSON is generated from the run config; ``deepspeed.config`` in the YAML is merged over it for
anything else DeepSpeed offers (offload, bucket sizes, ...). bf16 runs as autocast over fp32 master weights
(DeepSpeed's ``torch_autocast``): the per-element reference energies (hundreds of eV) and the positions stay
in fp32, where a bf16 copy of the weights would round them to whole eV.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from data_pipeline.batch import AtomBatch
from model.checkpoint_layout import DEEPSPEED_TAG, CheckpointFolder
from train.config import TrainConfig
from train.engine.base import global_grad_norm, parameter_groups
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

    def forward(self, batch: AtomBatch, outputs: tuple[str, ...], conservative: bool) -> dict[str, Tensor]:
        return self.engine(batch, outputs=outputs, conservative=conservative)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss)

    @property
    def is_boundary(self) -> bool:
        return bool(self.engine.is_gradient_accumulation_boundary())

    def step(self) -> float | None:
        boundary = self.is_boundary
        norm = global_grad_norm(list(self.module.parameters())) if boundary and self.stage == 0 else None
        self.engine.step()
        if not boundary:
            return None
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

    def load(self, directory: Path) -> None:
        ds_dir = CheckpointFolder(directory).deepspeed
        path, _ = self.engine.load_checkpoint(
            str(ds_dir), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {ds_dir}")
