"""The SLURM batch script of a training run: ``launch/slurm/torchrun.sbatch`` filled in from a job's settings.

One srun task per node runs torchrun (c10d rendezvous on the allocation's first node, the job id as the
rendezvous id, ``--nnodes MIN:MAX`` when elastic); SIGUSR1 before the time limit creates the run's STOP file
(the trainer checkpoints and exits 0) and the job requeues itself.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm") / "torchrun.sbatch"
TIME_LIMIT = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # SLURM's forms: M, M:S, H:M:S, D-H, D-H:M:S, ...
JOB_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SlurmJob:
    """What the batch script needs. Paths are absolute: the job runs wherever SLURM puts it."""

    config: Path
    overrides: list[str]
    run_dir: Path
    nodes: int
    gpus_per_node: int
    job_name: str = "atomfm"
    time: str = "24:00:00"
    min_nodes: int | None = None  # elastic: torchrun --nnodes MIN:nodes
    max_restarts: int = 0
    signal_seconds: int = 300
    port: int = 29500
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    sbatch_options: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. --qos=high
    env: dict[str, str] = field(default_factory=dict)  # exported before srun, e.g. NCCL_SOCKET_IFNAME
    workdir: Path = field(default_factory=Path.cwd)
    python: str = "python"
    command: str = "atomfm launch slurm"

    def check(self) -> None:
        """Raise ValueError naming the first setting SLURM or torchrun would refuse."""
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("--nodes and --gpus-per-node must be at least 1")
        if self.min_nodes is not None and not 1 <= self.min_nodes <= self.nodes:
            raise ValueError(
                f"--min-nodes must be between 1 and --nodes ({self.nodes}), got {self.min_nodes}"
            )
        if not TIME_LIMIT.match(self.time):
            raise ValueError(
                f"--time {self.time!r} is not a SLURM time limit (e.g. 24:00:00, 2-00:00:00, 90)"
            )
        if not JOB_NAME.match(self.job_name):
            raise ValueError(f"--job-name {self.job_name!r}: use letters, digits, '.', '_' and '-'")
        if self.max_restarts < 0 or self.signal_seconds < 1 or not 1 <= self.port <= 65535:
            raise ValueError("--max-restarts must be >= 0, --signal-seconds >= 1, --port in 1..65535")
        for flag, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not JOB_NAME.match(value.replace(",", "")):
                raise ValueError(
                    f"{flag} {value!r}: use letters, digits, '.', '_', '-' (and ',' between names)"
                )
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError("--cpus-per-task must be at least 1")
        for name in self.env:
            if not ENV_NAME.match(name):
                raise ValueError(f"--env {name!r} is not an environment variable name")
        for option in self.sbatch_options:
            if not option.startswith("--") or "\n" in option:
                raise ValueError(f"--sbatch-option {option!r} must be one option such as --qos=high")

    def sbatch_lines(self) -> list[str]:
        options = [
            f"--job-name={self.job_name}",
            f"--nodes={self.nodes if self.min_nodes is None else f'{self.min_nodes}-{self.nodes}'}",
            "--ntasks-per-node=1",
            f"--gpus-per-node={self.gpus_per_node}",
            f"--time={self.time}",
            "--requeue",
            f"--signal=B:USR1@{self.signal_seconds}",
            f"--chdir={self.workdir}",
            "--output=%x-%j.out",
        ]
        if self.cpus_per_task is not None:
            options.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.account:
            options.append(f"--account={self.account}")
        if self.min_nodes is not None:
            options.append("--no-kill")  # elastic: a failed node leaves the job running on the others
        return [f"#SBATCH {o}" for o in [*options, *self.sbatch_options]]


def render_sbatch(job: SlurmJob) -> str:
    """The batch script for ``job`` (checked first: a ValueError names the bad setting)."""
    job.check()
    nnodes = str(job.nodes) if job.min_nodes is None else f"{job.min_nodes}:{job.nodes}"
    fields = {
        "command": job.command,
        "sbatch_options": "\n".join(job.sbatch_lines()),
        "workdir": shlex.quote(str(job.workdir)),
        "python": shlex.quote(job.python),
        "run_dir": shlex.quote(str(job.run_dir)),
        "port": str(job.port),
        "gpus_per_node": str(job.gpus_per_node),
        "signal_seconds": str(job.signal_seconds),
        "exports": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in job.env.items()),
        "nnodes": nnodes,
        # a fixed-size job ends when any node's torchrun fails; an elastic one lives on with the nodes left
        "srun_options": "--kill-on-bad-exit=1" if job.min_nodes is None else "--kill-on-bad-exit=0",
        "max_restarts": str(job.max_restarts),
        "config": shlex.quote(str(job.config)),
        "overrides": "".join(" " + shlex.quote(o) for o in job.overrides),
    }
    text = TEMPLATE.read_text()
    missing = set(re.findall(r"\{\{(\w+)\}\}", text)) - set(fields)
    if missing:
        raise KeyError(f"{TEMPLATE} names fields the renderer does not fill: {', '.join(sorted(missing))}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fields[m.group(1)], text)
