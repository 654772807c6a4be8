"""Exponential moving average of the model weights, kept in fp32 beside the trained ones.

Under ZeRO-3 each rank holds only its partition of every parameter (``param.ds_tensor``: rank r owns the
flattened elements ``[r * p, (r + 1) * p)``, zero-padded at the end), so each rank averages exactly that
partition and :func:`consolidate_partitions` joins the per-rank states back into full tensors.
"""

from __future__ import annotations

from typing import Any

import torch


def local_parameter_data(param: torch.nn.Parameter) -> torch.Tensor:
    """What this rank holds of ``param``: its ZeRO-3 partition (1-D) or the full tensor."""
    partition = getattr(param, "ds_tensor", None)
    return partition if partition is not None else param.data


class ParameterEMA:
    """Shadow weights ``s ← d·s + (1 − d)·w`` after every optimiser step, with ``d = min(decay, (1+n)/(10+n))``.

    The warm-up of ``d`` keeps early averages from being dominated by the random initial weights.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.partitioned = any(hasattr(p, "ds_tensor") for p in module.parameters())
        self.shapes = {name: list(getattr(p, "ds_shape", p.shape)) for name, p in module.named_parameters()}
        self.shadow = {
            name: local_parameter_data(p).detach().to(torch.float32).clone()
            for name, p in module.named_parameters()
        }

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        d = self.current_decay()
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(local_parameter_data(p).to(torch.float32), 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "partitioned": self.partitioned,
            "shapes": self.shapes,
            "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: parameters {sorted(missing)[:5]} differ")
        if bool(state["partitioned"]) != self.partitioned:
            raise ValueError("EMA state was saved with a different ZeRO-3 partitioning than this run uses")
        for name, value in state["shadow"].items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(
                    f"EMA state for {name} has shape {tuple(value.shape)}, this run holds "
                    f"{tuple(self.shadow[name].shape)} (resume with the same number of processes)"
                )
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])

    def load_consolidated(
        self, full: dict[str, torch.Tensor], *, decay: float, num_updates: int, rank: int
    ) -> None:
        """Take full EMA tensors (:func:`consolidate_partitions`, from a run on any number of processes):
        under ZeRO-3 this rank keeps its partition, elements ``[rank * p, (rank + 1) * p)`` zero-padded."""
        missing = set(self.shadow) ^ set(full)
        if missing:
            raise ValueError(f"EMA state does not match the model: parameters {sorted(missing)[:5]} differ")
        for name, value in full.items():
            local = self.shadow[name]
            if not self.partitioned:
                local.copy_(value)
                continue
            flat = value.reshape(-1)[rank * local.numel() : (rank + 1) * local.numel()]
            local.zero_()
            local[: flat.numel()].copy_(flat)
        self.decay = float(decay)
        self.num_updates = int(num_updates)


def consolidate_partitions(rank_states: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Full fp32 EMA tensors from the states of all ranks (one state if it was not partitioned)."""
    first = rank_states[0]
    if not first["partitioned"]:
        return {k: v.clone() for k, v in first["shadow"].items()}
    full = {}
    for name, shape in first["shapes"].items():
        numel = int(torch.Size(shape).numel())
        flat = torch.cat([state["shadow"][name] for state in rank_states])
        full[name] = flat[:numel].view(shape).clone()
    return full
