"""Runs that change size or meet faults, with real processes (gloo): a DeepSpeed ZeRO-2 run saved on 2 ranks
resumes on 1, and that one on 2 again, with every sample of an epoch delivered once across both changes and
the optimiser state carried over exactly.

Run as a script (``python tests/test_train_elastic.py resume-and-save CONFIG CHECKPOINT SAVE``) this file is the
worker that resumes a checkpoint, writes the engine state it loaded to SAVE, then trains.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from stream_corpus import crystals, molecules, write_corpus

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hostile import child_environment, train_config  # noqa: E402

from train.logging import read_metrics  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("elastic_corpus")
    structures = [s for s in molecules(40) + crystals(10) if s.num_atoms > 1]
    write_corpus(folder, structures, shard_size=5)
    return folder, [s.key for s in structures]


def elastic_config(
    corpus: Path, out: Path, engine: str = "deepspeed", debug: dict | None = None, **run
) -> Path:
    """A tiny run of ``engine`` (DeepSpeed: ZeRO-2) that logs the sample keys it is given."""
    path = train_config(
        corpus,
        out,
        run={"max_steps": 7, "checkpoint_every": 2, "keep_last": 5, **run},
        data={"repeat": False},
        optim={"lr": 2e-3, "warmup_steps": 1, "ema_decay": 0.9},
        debug={"log_sample_keys": True, **(debug or {})},
    )
    cfg = yaml.safe_load(path.read_text()) | {"engine": engine, "deepspeed": {"zero_stage": 2}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def launch(command: list[str], log: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        command, cwd=ROOT, env=child_environment(ROOT), capture_output=True, text=True, timeout=timeout
    )
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    assert result.returncode == 0, f"{' '.join(command)} failed; see {log}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def resume_and_save(config: str, checkpoint: str, save: str) -> None:
    """Worker (every rank): resume ``checkpoint``, write the engine state as loaded to ``save``, train on."""
    from train.config import load_config
    from train.engine.distributed import init_distributed, shutdown_distributed
    from train.trainer import train

    cfg = load_config(config)
    ctx = init_distributed(cfg.distributed, engine=cfg.engine)
    from train import trainer as trainer_module

    build = trainer_module.Trainer._build

    def build_then_save(self, resume, use_wandb):
        build(self, resume, use_wandb)
        self.engine.save(Path(save))

    trainer_module.Trainer._build = build_then_save
    train(cfg, ctx, resume=checkpoint, use_wandb=False)
    shutdown_distributed()


def zero_partitions(state_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Per optimiser group: the fp32 master weights and Adam moments, the ranks' ZeRO partitions joined."""
    shards = [
        torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        for path in sorted(state_dir.glob("zero_pp_rank_*_optim_states.pt"))
    ]
    groups = []
    for g in range(len(shards[0]["single_partition_of_fp32_groups"])):
        joined = {"fp32": torch.cat([s["single_partition_of_fp32_groups"][g] for s in shards])}
        for key in ("exp_avg", "exp_avg_sq"):
            joined[key] = torch.cat([s["base_optimizer_state"]["state"][g][key] for s in shards])
        groups.append(joined)
    return groups


def assert_same_zero_state(saved: Path, loaded: Path) -> None:
    """The state a resume on another world size loaded equals the checkpoint's (ZeRO padding aside)."""
    for before, after in zip(zero_partitions(saved), zero_partitions(loaded), strict=True):
        for key, value in before.items():
            n = min(value.numel(), after[key].numel())
            assert torch.equal(value[:n], after[key][:n]), key
            assert not value[n:].any() and not after[key][n:].any(), f"{key}: padding holds values"
        assert before["exp_avg"].abs().sum() > 0


def sample_keys(run_dir: Path, before_step: int | None = None) -> list[dict]:
    records = [
        json.loads(line)
        for path in sorted((run_dir / "sample_keys").glob("rank_*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return [r for r in records if before_step is None or r["step"] < before_step]


@pytest.fixture(scope="module")
def resharded(corpus, tmp_path_factory) -> dict:
    """2 ranks for steps 1–2 (and on to 7, uninterrupted, with non-finite gradients at step 3); 1 rank from
    its step 2 to 5; 2 ranks from that step 5 to 7."""
    folder, keys = corpus
    base = tmp_path_factory.mktemp("resharded")
    runs = {name: base / name for name in ("two", "one", "two_again")}
    configs = {
        "two": elastic_config(folder, runs["two"], debug={"poison_gradients_at_step": 3}),
        "one": elastic_config(folder, runs["one"], max_steps=5),
        "two_again": elastic_config(folder, runs["two_again"]),
    }
    output = {
        "two": launch(
            torchrun(2, "-m", "launch.cli", "train", "--config", str(configs["two"])), base / "two.log"
        )
    }
    worker = [str(Path(__file__).resolve()), "resume-and-save"]
    from_two = runs["two"] / "checkpoints" / "step_00000002"
    output["one"] = launch(
        [sys.executable, *worker, str(configs["one"]), str(from_two), str(base / "loaded_one")],
        base / "one.log",
    )
    from_one = runs["one"] / "checkpoints" / "step_00000005"
    output["two_again"] = launch(
        torchrun(2, *worker, str(configs["two_again"]), str(from_one), str(base / "loaded_two")),
        base / "two_again.log",
    )
    return {
        "runs": runs,
        "configs": configs,
        "base": base,
        "keys": keys,
        "output": output,
        "from": (from_two, from_one),
    }


def test_every_sample_of_an_epoch_is_delivered_once_across_two_changes_of_world_size(resharded):
    runs, keys = resharded["runs"], resharded["keys"]
    segments = [
        sample_keys(runs["two"], before_step=2),
        sample_keys(runs["one"]),
        sample_keys(runs["two_again"]),
    ]
    assert [{r["world_size"] for r in s} for s in segments] == [{2}, {1}, {2}]
    assert {r["step"] for r in segments[1]} == {2, 3, 4} and {r["step"] for r in segments[2]} == {5, 6}
    by_epoch: dict[int, Counter] = defaultdict(Counter)
    spans: dict[int, set[int]] = defaultdict(set)
    for index, segment in enumerate(segments):
        for record in segment:
            by_epoch[record["epoch"]].update(record["keys"])
            spans[record["epoch"]].add(index)
    *complete, last = sorted(by_epoch)
    assert complete, "the run did not finish an epoch"
    for epoch in complete:
        assert by_epoch[epoch] == Counter(keys), f"epoch {epoch}: a sample lost or delivered twice"
    assert max(by_epoch[last].values()) == 1, f"epoch {last}: a sample delivered twice"
    # both changes fall inside an epoch: 2 → 1 inside epoch 0, 1 → 2 inside epoch 1
    assert spans[0] == {0, 1} and spans[1] == {1, 2}, dict(spans)


def test_weights_and_adam_moments_are_resharded_exactly(resharded):
    from_two, from_one = resharded["from"]
    assert_same_zero_state(from_two / "ds" / "state", resharded["base"] / "loaded_one" / "ds" / "state")
    assert_same_zero_state(from_one / "ds" / "state", resharded["base"] / "loaded_two" / "ds" / "state")
    assert "was written by 2 processes, this run has 1: resharding" in resharded["output"]["one"]
    assert "was written by 1 processes, this run has 2: resharding" in resharded["output"]["two_again"]
    assert not list(resharded["runs"]["one"].glob("checkpoints/.universal-*")), "scratch left behind"


def first_loss_after_resume(config: Path, checkpoint: Path, world_size: int) -> float:
    """The loss of the first step after resuming ``checkpoint`` on ``world_size`` ranks, computed here in one
    process: the checkpoint's weights on the ranks' first batches after resharding, joined (the global batch)."""
    from torch_geometric.data import Batch

    from data_pipeline.stream import StructureStream
    from model.checkpoint_io import load_model
    from train.config import ConfigOrigin, load_config
    from train.engine.distributed import DistContext
    from train.run_setup import model_stream_config
    from train.tasks import build_tasks
    from train.trainer import micro_batch_loss

    cfg = load_config(config)
    model = load_model(checkpoint).train()
    states = [torch.load(p, weights_only=False)["stream"] for p in sorted(checkpoint.glob("rank_*.pt"))]
    firsts = []
    for rank in range(world_size):
        stream = StructureStream(model_stream_config(cfg.data, model), rank, world_size)
        stream.load_resharded(states)
        firsts.append(next(iter(stream)))
    merged = Batch.from_data_list([graph for batch in firsts for graph in batch.to_data_list()])
    one_process = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    loss = micro_batch_loss(
        lambda b, o, c: model(b, outputs=o, conservative=c),
        merged,
        build_tasks(cfg.tasks, ConfigOrigin("test")),
        one_process,
        seed=cfg.run.seed,
        step=json.loads((checkpoint / "trainer_state.json").read_text())["step"],
        micro=0,
        conservative=False,
    )
    return loss.value


def test_the_step_counter_schedule_and_loss_curve_continue_across_the_changes(resharded):
    """The first step after each change has the loss of the checkpoint's weights on the new layout's global
    batch (to 1e-5: one process sums in another order than two); later steps see other batches than the
    uninterrupted run (the global batch changes size with the world), so only their schedule is compared."""
    runs, configs = resharded["runs"], resharded["configs"]
    from_two, from_one = resharded["from"]
    reference = {r["step"]: r for r in read_metrics(runs["two"])}
    one = {r["step"]: r for r in read_metrics(runs["one"])}
    two_again = {r["step"]: r for r in read_metrics(runs["two_again"])}
    assert sorted(one) == [3, 4, 5] and sorted(two_again) == [6, 7]
    for step, record in (one | two_again).items():
        assert record["lr"] == pytest.approx(reference[step]["lr"], rel=1e-12), step
    assert one[3]["loss"] == pytest.approx(first_loss_after_resume(configs["one"], from_two, 1), rel=1e-5)
    assert two_again[6]["loss"] == pytest.approx(
        first_loss_after_resume(configs["two_again"], from_one, 2), rel=1e-5
    )


def test_nonfinite_gradients_skip_the_zero2_step_on_every_rank(resharded):
    """Rank 0's gradients of step 3 are NaN (its loss is finite): DeepSpeed's global gradient norm says so on
    both ranks, both skip the update, and step 3 is made again from the next batches."""
    assert (
        "step 3: non-finite gradients (in the global gradient norm), the optimiser step is skipped on every rank"
        in resharded["output"]["two"]
    )
    state = json.loads(
        (resharded["runs"]["two"] / "checkpoints" / "step_00000004" / "trainer_state.json").read_text()
    )
    assert state["step"] == 4 and state["nonfinite_skipped"] == 1
    assert all(
        math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
        for r in read_metrics(resharded["runs"]["two"])
    )


def worker_pids(agent: int) -> dict[int, int]:
    """rank → pid of the training processes a torchrun agent started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if ppid == agent and ranks:
            found[int(ranks[0])] = int(entry.name)
    return found


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(every)
    return found


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_environment(ROOT),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def stop_by_signal(command: list[str], run_dir: Path, signum: int, rank: int, log: Path) -> str:
    """Start the job, send ``signum`` to rank ``rank`` once it trains, and again while the checkpoint is being
    written; returns the job's output after it exits 0."""
    proc = start(command, log)
    try:
        before = len(logged_steps(run_dir))
        wait_for(lambda: len(logged_steps(run_dir)) > before, proc, "a trained step")
        pid = wait_for(lambda: worker_pids(proc.pid).get(rank), proc, f"rank {rank}'s process")
        os.kill(pid, signum)
        writing = run_dir / "checkpoints"
        wait_for(lambda: list(writing.glob(".tmp-*")), proc, "a checkpoint being written", every=0.002)
        os.kill(pid, signum)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
    return log.read_text()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigterm_and_sigusr1_each_stop_two_ranks_with_one_intact_checkpoint_and_a_rerun_resumes(
    corpus, tmp_path
):
    """The signal reaches one rank; every rank saves one checkpoint at the next step and the job exits 0.
    A second signal that arrives while the checkpoint is written changes nothing. (Rank 0's gradients of step 1
    are NaN, its loss finite: under DDP every rank sees them and skips that update.)"""
    from model.checkpoint_layout import checkpoint_damage, list_checkpoints

    run_dir = tmp_path / "preempted"
    config = elastic_config(
        corpus[0],
        run_dir,
        engine="ddp",
        debug={"poison_gradients_at_step": 1},
        max_steps=10_000,
        checkpoint_every=10_000,
    )
    command = torchrun(2, "-m", "launch.cli", "train", "--config", str(config))
    first = stop_by_signal(command, run_dir, signal.SIGTERM, 1, tmp_path / "sigterm.log")
    (saved,) = list_checkpoints(run_dir)
    assert checkpoint_damage(saved) == [] and f"stop requested: saved {saved}" in first
    skip = (
        "step 1: non-finite gradients (on rank 0, 1), the optimiser step is skipped on every rank (1 in a row"
    )
    assert skip in first and json.loads((saved / "trainer_state.json").read_text())["nonfinite_skipped"] == 1
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in read_metrics(run_dir))
    second = stop_by_signal(command, run_dir, signal.SIGUSR1, 0, tmp_path / "sigusr1.log")
    assert f"resumed from {saved} at step" in second
    older, newer = list_checkpoints(run_dir)
    assert older == saved and checkpoint_damage(newer) == [] and f"stop requested: saved {newer}" in second
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_a_rank_killed_mid_run_under_max_restarts_comes_back_from_the_latest_checkpoint(corpus, tmp_path):
    """torchrun --max-restarts 1: rank 1 SIGKILLed while step 4's checkpoint is being written; both ranks
    restart from the newest intact checkpoint (the half-written one is not listed), and the job finishes with
    the final loss of a run resumed from that checkpoint without a fault."""
    from model.checkpoint_layout import checkpoint_damage, list_checkpoints

    run_dir = tmp_path / "elastic"
    config = elastic_config(corpus[0], run_dir, engine="ddp", max_steps=8, keep_last=10)
    command = torchrun(2, "--max-restarts=1", "-m", "launch.cli", "train", "--config", str(config))
    proc = start(command, tmp_path / "elastic.log")
    try:
        rank1 = wait_for(lambda: worker_pids(proc.pid).get(1), proc, "rank 1's process")
        writing = run_dir / "checkpoints" / ".tmp-step_00000004"
        wait_for(writing.is_dir, proc, "step 4's checkpoint being written", every=0.002)
        os.kill(rank1, signal.SIGKILL)
        killed_at = max(logged_steps(run_dir))
        assert proc.wait(timeout=300) == 0, (tmp_path / "elastic.log").read_text()[-3000:]
    finally:
        stop(proc)
    output = (tmp_path / "elastic.log").read_text()
    (resumed,) = re.findall(r"resumed from (\S+) at step (\d+)", output)
    checkpoint, step = Path(resumed[0]), int(resumed[1])
    # step 2's checkpoint (or step 4's, if its rename beat the kill): at most the steps since it are lost
    assert checkpoint.name in ("step_00000002", "step_00000004") and step <= killed_at < 8, (step, killed_at)
    saved = list_checkpoints(run_dir)
    assert [p.name for p in saved][-1] == "step_00000008" and all(checkpoint_damage(p) == [] for p in saved)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    reference_dir = tmp_path / "reference"
    reference = elastic_config(corpus[0], reference_dir, engine="ddp", max_steps=8, keep_last=10)
    launch(
        torchrun(2, "-m", "launch.cli", "train", "--config", str(reference), "--resume", str(checkpoint)),
        tmp_path / "reference.log",
    )
    final = [r for r in read_metrics(run_dir) if r["step"] == 8]
    assert final[-1]["loss"] == read_metrics(reference_dir)[-1]["loss"]


def start_hanging_job(
    corpus: Path, run_dir: Path, collective_timeout_s: float, log: Path
) -> subprocess.Popen:
    """Two DDP ranks under torchrun; rank 1 sleeps in step 1 (``debug.hang_rank``), rank 0 waits for it."""
    config = elastic_config(corpus, run_dir, engine="ddp", max_steps=4)
    raw = yaml.safe_load(config.read_text())
    raw["distributed"] = {"collective_timeout_s": collective_timeout_s}
    raw["debug"] |= {"hang_rank": 1, "hang_at_step": 1}
    config.write_text(yaml.safe_dump(raw))
    return start(torchrun(2, "-m", "launch.cli", "train", "--config", str(config)), log)


def test_a_hung_rank_is_reported_within_the_collective_timeout_and_the_job_exits_non_zero(corpus, tmp_path):
    run_dir = tmp_path / "hung"
    proc = start_hanging_job(corpus[0], run_dir, 5, tmp_path / "hung.log")
    try:
        wait_for(lambda: logged_steps(run_dir), proc, "step 1")
        reached = time.monotonic()
        code = proc.wait(timeout=120)
        took = time.monotonic() - reached
    finally:
        stop(proc)
    output = (tmp_path / "hung.log").read_text()
    print(f"the hang was reported and the job exited {took:.1f} s after step 1 was logged")
    assert code != 0 and took < 60, (code, took)
    assert re.search(
        r"rank 1 made no progress for \d+ s at step 1, in a sleep injected by debug.hang_rank", output
    )
    # rank 0 waits in the all-reduce: its own limit fires, or (when rank 1's limit came first) rank 1's exit
    # fails the collective; either way rank 0 names the phase it waited in
    assert re.search(
        r"rank 0 (made no progress for|lost a peer rank after) \d+ s at step 1, in the forward pass and loss "
        r"all-reduce",
        output,
    )
    assert "Traceback" not in output.split("made no progress")[0]


def test_a_rank_that_dies_mid_step_is_named_by_the_rank_waiting_for_it_without_a_traceback(corpus, tmp_path):
    """Rank 1 is killed (SIGKILL) while rank 0 waits for it in the all-reduce, long before the collective limit:
    rank 0 says where it was, with no traceback, and the job exits non-zero at once."""
    run_dir = tmp_path / "killed"
    proc = start_hanging_job(corpus[0], run_dir, 120, tmp_path / "killed.log")
    try:
        wait_for(lambda: logged_steps(run_dir), proc, "step 1")
        victim = wait_for(lambda: worker_pids(proc.pid).get(1), proc, "rank 1's process")
        time.sleep(1.0)  # rank 0 is in the all-reduce, rank 1 in its injected sleep
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        code = proc.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        stop(proc)
    output = (tmp_path / "killed.log").read_text()
    print(f"the job exited {took:.1f} s after rank 1 was killed")
    assert code != 0 and took < 30, (code, took)
    assert re.search(
        r"rank 0 lost a peer rank after \d+ s at step 1, in the forward pass and loss all-reduce", output
    ), output[-3000:]
    assert "made no progress" not in output
    assert "Traceback" not in output.split("lost a peer rank")[0]
    assert not re.search(r'File ".*/(train|model|data_pipeline)/', output), output[-3000:]  # none of ours


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if args[0] == "resume-and-save":
        resume_and_save(*args[1:4])
