"""Watching a run: metrics.jsonl in the run folder, wandb, and a progress bar with atoms/s and ETA (rank 0).

wandb runs offline unless the user is logged in (an API key in ``WANDB_API_KEY`` or ``~/.netrc``);
``WANDB_MODE`` (``online``, ``offline``, ``disabled``) always wins; ``--no-wandb`` turns it off.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import resource
import secrets
from pathlib import Path
from typing import Any

import torch

from data_pipeline.atomic_files import write_text_atomic
from train.config import TrainConfig

METRICS_FILE = "metrics.jsonl"


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else online with credentials and offline without."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size, GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class RunLogger:
    """Rank 0 writes; other ranks hold a logger that does nothing."""

    def __init__(self, cfg: TrainConfig, *, is_main: bool, start_step: int, use_wandb: bool) -> None:
        self.active = is_main
        self.run_dir = cfg.run_dir
        self.total_steps = cfg.run.max_steps
        self.bar = None
        self.wandb_run = None
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        truncate_metrics(self.metrics_path, start_step)
        if use_wandb and cfg.logging.wandb and wandb_mode() != "disabled":
            self.wandb_run = start_wandb(cfg, self.run_dir)
        if cfg.run.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run.name
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": step, **metrics}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics.get('loss', math.nan):.4g}",
                atoms_s=f"{metrics.get('atoms_per_s', 0.0):.0f}",
                refresh=False,
            )
        else:
            shown = {k: v for k, v in record.items() if "/" not in k}
            print(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()),
                flush=True,
            )

    def validation(
        self, step: int, metrics: dict[str, float], metric: str, best: float | None, best_step: int | None
    ) -> None:
        """A validation record (``val/<domain>/<metric>`` in meV units) and one line per domain."""
        if not self.active:
            return
        record = {"step": step, **metrics, "val/best": best, "val/best_step": best_step}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        domains = sorted({key.split("/")[1] for key in metrics})
        units = {"energy_mae": "E", "force_mae": "F", "stress_mae": "S"}
        parts = []
        for domain in domains:
            shown = [
                f"{units[k.split('/')[2]]} {v:.1f}" for k, v in metrics.items() if k.split("/")[1] == domain
            ]
            parts.append(f"{domain}: {' '.join(shown)}")
        best_text = "" if best is None else f" | best {metric} {best:.1f} at step {best_step}"
        self.message(f"val step {step} (meV/atom, meV/Å, meV/Å³) " + "; ".join(parts) + best_text)
        if self.bar is not None and metric in metrics:
            self.bar.set_postfix(val=f"{metrics[metric]:.1f}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(cfg: TrainConfig, run_dir: Path) -> Any:
    """A wandb run that a resumed training continues (its id is kept in the run folder)."""
    import wandb

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    write_text_atomic(id_file, run_id)
    return wandb.init(
        project=cfg.logging.project,
        entity=cfg.logging.entity,
        name=cfg.run.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=cfg.to_dict(),
        tags=cfg.logging.tags,
        mode=wandb_mode(),
    )


def truncate_metrics(path: Path, start_step: int) -> None:
    """Drop records after ``start_step`` (a resumed run rewrites them), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line]
