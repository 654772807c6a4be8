"""Process-group setup for every way a run starts: torchrun, the deepspeed launcher, SLURM, or a bare process."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from train.config import DistributedConfig


@dataclass
class DistContext:
    """This process's place in the run, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor; the input is left alone)."""
        out = tensor.clone()
        if self.world_size > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def launcher_environment(local_rank_arg: int | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun / deepspeed / SLURM variables; a bare process is rank 0 of 1.

    A bare process gets a free local port for the (single-member) process group; under SLURM without a
    launcher, ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` are used (MASTER_ADDR/PORT must be set).
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        rank, world, local = (
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
        )
    else:
        rank, world, local = 0, 1, 0
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = str(rank), str(world), str(local)
    return rank, world, local


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(
    cfg: DistributedConfig, *, engine: str, local_rank_arg: int | None = None
) -> DistContext:
    """Join (or create) the process group: nccl with CUDA, gloo otherwise, unless ``cfg.backend`` says."""
    rank, world, local = launcher_environment(local_rank_arg)
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    if not dist.is_initialized():
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is not None:
            # A group restarted by torchrun (--max-restarts) meets in the store of the agent that restarted it,
            # where its dead predecessor's addresses still are: each attempt gets keys of its own.
            store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
            store = dist.PrefixStore(f"atomfm/attempt_{attempt}", store)
            dist.init_process_group(
                backend=backend, store=store, timeout=timeout, rank=rank, world_size=world
            )
        if engine == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(
                dist_backend=backend, timeout=timeout, auto_mpi_discovery=False, rank=rank, world_size=world
            )
        elif not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timeout, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device, backend=backend)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
