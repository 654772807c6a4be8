"""Runs that change size or meet faults, with real processes (gloo): a DeepSpeed ZeRO-2 run saved on 2 ranks
resumes on 1, and that one on 2 again, with every sample of an epoch delivered once across both changes and
the optimiser state carried over exactly.

Run as a script (``python tests/test_train_elastic.py resume-and-save CONFIG CHECKPOINT SAVE``) this file is the
worker that resumes a checkpoint, writes the engine state it loaded to SAVE, then trains.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


def elastic_config(corpus: Path, out: Path, engine: str = "deepspeed", **run) -> Path:
    """A tiny run of ``engine`` (DeepSpeed: ZeRO-2) that logs the sample keys it is given."""
    path = train_config(
        corpus,
        out,
        run={"max_steps": 6, "checkpoint_every": 2, "keep_last": 5, **run},
        data={"repeat": False},
        optim={"lr": 2e-3, "warmup_steps": 1, "ema_decay": 0.9},
        debug={"log_sample_keys": True},
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
    """2 ranks for steps 1–2 (and on to 6, uninterrupted); 1 rank from its step 2 to 4; 2 ranks from that
    step 4 to 6."""
    folder, keys = corpus
    base = tmp_path_factory.mktemp("resharded")
    runs = {name: base / name for name in ("two", "one", "two_again")}
    configs = {name: elastic_config(folder, out) for name, out in runs.items()}
    configs["one"] = elastic_config(folder, runs["one"], max_steps=4)
    launch(torchrun(2, "-m", "launch.cli", "train", "--config", str(configs["two"])), base / "two.log")
    worker = [str(Path(__file__).resolve()), "resume-and-save"]
    from_two = runs["two"] / "checkpoints" / "step_00000002"
    output = {
        "one": launch(
            [sys.executable, *worker, str(configs["one"]), str(from_two), str(base / "loaded_one")],
            base / "one.log",
        )
    }
    from_one = runs["one"] / "checkpoints" / "step_00000004"
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
    assert {r["step"] for r in segments[1]} == {2, 3} and {r["step"] for r in segments[2]} == {4, 5}
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
    assert any(len(s) > 1 for s in spans.values()), "no change of world size fell inside an epoch"


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
    assert sorted(one) == [3, 4] and sorted(two_again) == [5, 6]
    for step, record in (one | two_again).items():
        assert record["lr"] == pytest.approx(reference[step]["lr"], rel=1e-12), step
    assert one[3]["loss"] == pytest.approx(first_loss_after_resume(configs["one"], from_two, 1), rel=1e-5)
    assert two_again[5]["loss"] == pytest.approx(
        first_loss_after_resume(configs["two_again"], from_one, 2), rel=1e-5
    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if args[0] == "resume-and-save":
        resume_and_save(*args[1:4])
