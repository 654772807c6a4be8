"""`atomfm launch ...`: job scripts for schedulers, rendered from the same training config as every launcher.

atomfm launch slurm --nodes 4 --gpus-per-node 8 --config configs/pretrain_demo.yaml optim.lr=3e-4
atomfm launch slurm --nodes 4 --gpus-per-node 8 --config FILE --out job.sbatch --submit

Every command `atomfm launch` runs is printed first, as ``+ command``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("launch", help="render (and submit) job scripts: SLURM")
    lsub = group.add_subparsers(dest="launch_command", metavar="SCHEDULER")

    p = lsub.add_parser(
        "slurm",
        help="render an sbatch script (srun + torchrun, c10d rendezvous, requeue, STOP on SIGUSR1)",
        description="Render the sbatch script of a training run: one srun task per node runs torchrun "
        "(c10d rendezvous keyed by the job id); SIGUSR1 before the time limit makes the run checkpoint and stop, "
        "and the job requeues itself. Prints the script, writes it (--out) or submits it (--submit).",
    )
    p.add_argument("--config", required=True, help="YAML training config (checked now, with the overrides)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.lr=3e-4"
    )
    p.add_argument("--nodes", type=int, required=True, help="nodes of the allocation")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (training processes) per node")
    p.add_argument("--min-nodes", type=int, default=None, help="elastic: accept MIN..--nodes nodes")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts of a failed worker group")
    p.add_argument("--time", default="24:00:00", help="time limit (SLURM's format; default 24:00:00)")
    p.add_argument("--job-name", default=None, help="default: the config's run.name")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node's task (default: SLURM's)")
    p.add_argument(
        "--signal-seconds",
        type=int,
        default=300,
        help="seconds before the time limit at which the run checkpoints and stops (default 300)",
    )
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="export in the job (repeatable)"
    )
    p.add_argument(
        "--sbatch-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="another #SBATCH line, e.g. --qos=high",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write the script here instead of printing it")
    p.add_argument("--submit", action="store_true", help="submit it with sbatch (writes --out or <run dir>/)")
    p.set_defaults(func=slurm)
    group.set_defaults(func=lambda args: group.print_help() or 2)


def slurm(args: argparse.Namespace) -> int:
    from data_pipeline.atomic_files import write_text_atomic
    from data_pipeline.schema import BadInputError
    from launch.slurm import SlurmJob, render_sbatch
    from train.config import load_config

    def fail(message: str) -> int:
        print(f"atomfm launch slurm: {message}", file=sys.stderr)
        return 2

    sbatch = shutil.which("sbatch")
    if args.submit and sbatch is None:
        return fail(
            "--submit: sbatch is not on PATH (is this a SLURM login node?); write the script with --out FILE "
            "and run `sbatch FILE` where SLURM is"
        )
    try:
        cfg = load_config(args.config, args.overrides)
    except BadInputError as err:
        return fail(f"bad config: {err}")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            return fail(f"--env {item!r}: expected KEY=VALUE")
        env[name] = value
    job = SlurmJob(
        config=Path(args.config).resolve(),
        overrides=list(args.overrides),
        run_dir=cfg.run_dir.resolve(),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        job_name=args.job_name or re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.run.name),
        time=args.time,
        min_nodes=args.min_nodes,
        max_restarts=args.max_restarts,
        signal_seconds=args.signal_seconds,
        port=args.port,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        sbatch_options=list(args.sbatch_option),
        env=env,
        python=sys.executable,
        command=command_line(args),
    )
    try:
        script = render_sbatch(job)
    except ValueError as err:
        return fail(str(err))
    out = args.out or (str(job.run_dir / f"{job.job_name}.sbatch") if args.submit else None)
    if out is None:
        sys.stdout.write(script)
        return 0
    try:
        path = write_text_atomic(out, script)
    except BadInputError as err:
        return fail(str(err))
    print(f"wrote {path}")
    if not args.submit:
        return 0
    command = [sbatch, str(path)]
    print("+ " + shlex.join(command), flush=True)
    return subprocess.run(command).returncode


def command_line(args: argparse.Namespace) -> str:
    """The command that rendered the script, for its header (one line)."""
    argv = (
        sys.argv[1:] if sys.argv[1:3] == ["launch", "slurm"] else ["launch", "slurm", "--config", args.config]
    )
    return shlex.join(["atomfm", *argv]).replace("\n", "\\n")
