"""Multi-node launch paths with real processes on localhost (gloo, one process per simulated node).

- the deepspeed launcher reading a two-host hostfile, started once per node (``--no_ssh --node_rank K``, the
  way DeepSpeed runs where nodes cannot ssh to each other), trains and checkpoints;
- that run, its last checkpoint removed (a job that ended after the one before), resumes under the same
  launcher with the losses of the uninterrupted run;
- a two-node torchrun job (two agents, ``--nnodes 2``, c10d rendezvous on 127.0.0.1) resumes the same
  checkpoint with the same losses and writes its own.

(A two-node torchrun job training from scratch is in test_train_distributed.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_train_distributed import build_corpus, environment, free_port, losses, run_config  # noqa: E402

from train.checkpoint import list_checkpoints  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SECTIONS = dict(
    run={"max_steps": 4, "checkpoint_every": 2},
    model={"conservative_forces": False},
    tasks={"dens": {"fraction": 0.3}, "denoise": {"fraction": 0.3}, "energy": {}, "forces": {"weight": 5.0}},
)


def start_nodes(commands: list[list[str]], logs: Path, timeout: float = 900) -> None:
    """Start one command per simulated node; every one must exit 0. Whatever is left at a failure (a launcher
    and its training processes) is killed, its process group at a time."""
    nodes = []
    try:
        for node, command in enumerate(commands):
            log = open(logs / f"node{node}.log", "w")
            proc = subprocess.Popen(
                command, cwd=ROOT, env=environment(), stdout=log, stderr=log, start_new_session=True
            )
            nodes.append((proc, log))
        deadline = time.monotonic() + timeout
        for proc, log in nodes:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert code == 0, f"{' '.join(proc.args)} exited {code}\n" + Path(log.name).read_text()[-3000:]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def deepspeed_hostfile_nodes(hostfile: Path, config: Path) -> list[list[str]]:
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    port = free_port()
    return [
        [launcher, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
         "--master_addr", "127.0.0.1", "--master_port", port,
         "--module", "launch.cli", "train", "--config", str(config), "--no-wandb"]
        for node in range(2)
    ]  # fmt: skip


def torchrun_nodes(config: Path) -> list[list[str]]:
    endpoint = f"127.0.0.1:{free_port()}"
    return [
        [sys.executable, "-m", "torch.distributed.run",
         "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
         "--rdzv-id", "atomfm-resume", "--max-restarts", "0",
         "-m", "launch.cli", "train", "--config", str(config), "--no-wandb"]
        for _ in range(2)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def hostfile_run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("hostfile")
    corpus = build_corpus(base / "corpus")
    hostfile = base / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two "nodes", one process each
    cfg = run_config(corpus, base / "run", **SECTIONS)
    start_nodes(deepspeed_hostfile_nodes(hostfile, cfg["path"]), base)
    return cfg | {"base": base, "corpus": corpus, "hostfile": hostfile}


def interrupted_copy(run: dict, name: str) -> dict:
    """The run's folder as a job that ended after its first checkpoint left it, with a config pointing there."""
    source = Path(run["run"]["out_dir"])
    cfg = run_config(run["corpus"], run["base"] / name, **SECTIONS)
    shutil.copytree(source, cfg["run"]["out_dir"])
    shutil.rmtree(Path(cfg["run"]["out_dir"]) / "checkpoints" / "step_00000004")
    return cfg


def test_deepspeed_launcher_with_a_hostfile_trains_and_checkpoints(hostfile_run):
    run_dir = Path(hostfile_run["run"]["out_dir"])
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    final = list_checkpoints(run_dir)[-1]
    assert final.name == "step_00000004"
    assert sorted(p.name for p in final.glob("rank_*.pt")) == ["rank_00000.pt", "rank_00001.pt"]


@pytest.mark.parametrize("launcher", ["deepspeed_hostfile", "torchrun_two_nodes"])
def test_a_hostfile_run_resumes_with_the_losses_of_the_uninterrupted_run(hostfile_run, launcher):
    reference = losses(Path(hostfile_run["run"]["out_dir"]))
    cfg = interrupted_copy(hostfile_run, launcher)
    if launcher == "deepspeed_hostfile":
        commands = deepspeed_hostfile_nodes(hostfile_run["hostfile"], cfg["path"])
    else:
        commands = torchrun_nodes(cfg["path"])
    logs = hostfile_run["base"] / f"{launcher}-logs"
    logs.mkdir()
    start_nodes(commands, logs)
    run_dir = Path(cfg["run"]["out_dir"])
    assert "resumed from" in "".join(log.read_text() for log in logs.glob("node*.log"))  # rank 0's node
    resumed = losses(run_dir)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == reference[step], f"step {step}"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002", "step_00000004"]
