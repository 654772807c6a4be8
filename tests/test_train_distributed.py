"""Pretraining with real processes (gloo) on a small real three-domain corpus.

- torchrun, 2 ranks, DeepSpeed ZeRO-2, conservative forces: the loss goes, and the gradients of the first
  step equal one process's gradients over both ranks' batches;
- the same run killed with SIGKILL after a checkpoint and resumed: the resumed steps' losses equal the
  uninterrupted run's;
- the deepspeed launcher, 2 ranks, ZeRO-3 with gradient accumulation, direct forces + denoising + contrast,
  one poisoned micro-batch: it is skipped and the run goes on; the ZeRO-3 checkpoint exports to safetensors
  that the ASE calculator loads with the live model's energies (and the EMA export joins the partitions);
- two torchrun agents meeting through a c10d rendezvous on localhost (a two-node job): the same losses as
  the single-node run;
- plain DDP under torchrun with gradient accumulation; a single process without any launcher, stopped by
  SIGTERM with a checkpoint.

Run as a script (``python tests/test_train_distributed.py zero3-export CONFIG OUT``) this file is also the
worker the ZeRO-3 export test starts under the deepspeed launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_pipeline.schema import DOMAINS  # noqa: E402
from train.checkpoint import list_checkpoints  # noqa: E402
from train.logging import read_metrics  # noqa: E402

pytestmark = pytest.mark.distributed
CUTOFF = 4.0
TINY = dict(
    channels=16,
    num_layers=1,
    num_heads=2,
    attn_channels=8,
    ffn_channels=16,
    radial_channels=16,
    num_rbf=8,
    cutoff=CUTOFF,
)


def build_corpus(out: Path) -> Path:
    """Conformers of NCI molecules (GFN2-xTB), rattled copies of the Ala6-Pro-Ala6 helix (amber14 after
    pdbfixer), fcc alloy cells (EMT, with stress); every structure in the train split."""
    import importlib.util
    from dataclasses import replace

    import numpy as np

    from data_pipeline.ingest import ingest_structures
    from data_pipeline.readers import read_structures
    from data_pipeline.sources import emt_alloys, read_smiles, smiles_conformers
    from data_pipeline.sources.perturb import rattle

    common = dict(workers=0, shard_size=3, split_fractions=(1.0, 0.0, 0.0), progress=False)
    molecules = smiles_conformers(read_smiles(min_atoms=8, max_atoms=14)[:5], conformers=3, workers=0)
    ingest_structures(molecules, out, source="nci", label="xtb", **common)
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    (helix,) = list(read_structures(data / "A6PA6_alpha.pdb", domain="protein"))
    rng = np.random.default_rng(0)
    copies = [
        replace(
            helix,
            key=f"a6pa6/{k}",
            group_id="a6pa6",
            positions=rattle(helix.positions, 0.05, rng).astype(np.float32),
        )
        for k in range(4)
    ]
    ingest_structures(copies, out, source="helix", label="amber14", **common)
    ingest_structures(emt_alloys(12, seed=1), out, source="alloys", label="emt", **common)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("train_corpus"))


def run_config(corpus: Path, out_dir: Path, **sections) -> dict:
    cfg = {
        "run": {
            "name": out_dir.name,
            "out_dir": str(out_dir),
            "max_steps": 6,
            "log_every": 1,
            "checkpoint_every": 2,
            "keep_last": 2,
            "progress_bar": False,
        },
        "data": {
            "corpus": [str(corpus)],
            "max_atoms": 160,
            "cutoff": CUTOFF,
            "shuffle_buffer": 16,
            "num_workers": 1,
        },
        "model": {"size": "tiny", "overrides": TINY, "conservative_forces": True},
        "tasks": {
            "dens": {"fraction": 0.3},
            "denoise": {"fraction": 0.3},
            "masked_atoms": {"weight": 0.5},
            "energy": {},
            "forces": {"weight": 5.0},
            "stress": {"weight": 100.0},
        },
        "optim": {"lr": 2e-3, "warmup_steps": 1, "ema_decay": 0.9},
        "engine": "deepspeed",
        "deepspeed": {"zero_stage": 2},
        "logging": {"wandb": False},
    }
    for name, values in sections.items():  # a given ``tasks`` replaces the list; other sections are updated
        merge = isinstance(values, dict) and name in cfg and name != "tasks"
        cfg[name] = {**cfg[name], **values} if merge else values
    path = out_dir.parent / f"{out_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg | {"path": path}


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    return env


def torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "launch.cli",
        *args,
    ]


def free_port() -> str:
    from train.engine.distributed import free_port as port

    return str(port())


def deepspeed_launcher(nproc: int, *args: str) -> list[str]:
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    return [launcher, "--num_accelerators", str(nproc), "--master_port", free_port(), *args]


def launch(command: list[str], log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout
    )
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    assert result.returncode == 0, f"{' '.join(command)} failed; see {log}\n{result.stderr[-3000:]}"
    return result


def losses(run_dir: Path) -> dict[int, dict[str, float]]:
    return {
        r["step"]: {k: v for k, v in r.items() if k == "loss" or k.startswith("loss/")}
        for r in read_metrics(run_dir)
    }


@pytest.fixture(scope="module")
def zero2_run(corpus, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("zero2")
    cfg = run_config(corpus, base / "uninterrupted", debug={"dump_gradients_at_step": 0})
    launch(torchrun(2, "train", "--config", str(cfg["path"]), "--no-wandb"), base / "uninterrupted.log")
    return cfg


def test_zero2_conservative_forces_on_two_ranks_under_torchrun(zero2_run):
    run_dir = Path(zero2_run["run"]["out_dir"])
    history = read_metrics(run_dir)
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    seen = {key for r in history for key in r}
    for domain in DOMAINS:
        assert any(key.endswith(f"/{domain}") for key in seen), domain
    assert {
        "loss/forces",
        "loss/energy",
        "loss/stress",
        "loss/dens",
        "atoms_per_s",
        "grad_norm",
        "lr",
    } <= seen
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000004", "step_00000006"]  # keep_last: 2
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    final = list_checkpoints(run_dir)[-1]
    assert sorted(p.name for p in final.glob("rank_*.pt")) == ["rank_00000.pt", "rank_00001.pt"]
    assert len(list((final / "ds" / "state").glob("*optim_states.pt"))) == 2
    assert json.loads((final / "trainer_state.json").read_text())["step"] == 6
    # 15 xTB conformers outnumber 12 EMT cells and 4 amber14 helices: the calculator's default level
    assert json.loads((final / "model_config.json").read_text())["main_level_of_theory"] == "gfn2-xtb"


def test_a_bit_flipped_in_a_zero2_optimiser_shard_is_refused_at_export(zero2_run, tmp_path, capsys):
    """The ZeRO-2 export joins the fp32 master weights of the optimiser shards: one flipped bit there used to
    export silently as a weight of 1e37. The checkpoint's checksums refuse it, naming the shard."""
    from launch.cli import main as atomfm

    final = list_checkpoints(Path(zero2_run["run"]["out_dir"]))[-1]
    damaged = Path(shutil.copytree(final, tmp_path / final.name))
    shard = sorted((damaged / "ds" / "state").glob("*optim_states.pt"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    assert atomfm(["export", str(damaged), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert f"ds/state/{shard.name} fails its sha256" in err and "Traceback" not in err
    assert atomfm(["export", str(final), "--out", str(tmp_path / "export")]) == 0


def test_two_rank_gradients_equal_one_process_on_the_global_batch(zero2_run):
    from torch_geometric.data import Batch

    from data_pipeline.stream import StreamConfig, StructureStream
    from train.config import ConfigOrigin, load_config
    from train.engine.distributed import DistContext
    from train.reference_fit import fit_reference_energies_on_corpus
    from train.tasks import build_tasks
    from train.trainer import build_model, micro_batch_loss, seed_everything

    cfg = load_config(zero2_run["path"], ["data.num_workers=0"])
    seed_everything(cfg.run.seed)
    model = build_model(cfg).train()
    model.reference_energies.set_table(fit_reference_energies_on_corpus(cfg.data.corpus, "train", 13).table)
    stream_cfg = StreamConfig.from_dict(cfg.data)
    halves = [next(iter(StructureStream(stream_cfg, rank, 2))) for rank in range(2)]
    merged = Batch.from_data_list(halves[0].to_data_list() + halves[1].to_data_list())
    one_process = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    loss = micro_batch_loss(
        lambda b, o, c: model(b, outputs=o, conservative=c),
        merged,
        build_tasks(cfg.tasks, ConfigOrigin("test")),
        one_process,
        seed=cfg.run.seed,
        step=0,
        micro=0,
        conservative=True,
    )
    loss.total.backward()
    two_ranks = torch.load(Path(cfg.run.out_dir) / "gradients_step_0.pt")
    first = read_metrics(cfg.run.out_dir)[0]
    assert first["loss"] == pytest.approx(loss.value, rel=1e-5)
    params = dict(model.named_parameters())
    assert set(two_ranks) == set(params)
    reached = [name for name, p in params.items() if p.grad is not None]
    assert len(reached) > len(params) // 2
    for name, p in params.items():  # heads no task reads (e.g. the direct-force head) have zero gradients
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        assert_close(two_ranks[name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_killed_run_resumes_with_the_losses_of_an_uninterrupted_run(zero2_run, tmp_path):
    reference = losses(Path(zero2_run["run"]["out_dir"]))
    out_dir = tmp_path / "killed"
    cfg = run_config(Path(zero2_run["data"]["corpus"][0]), out_dir, debug=zero2_run["debug"])
    command = torchrun(2, "train", "--config", str(cfg["path"]), "--no-wandb")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while not (out_dir / "checkpoints" / "step_00000002").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, (
                "run ended before its first checkpoint"
            )
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = list_checkpoints(out_dir)
    assert saved and saved[-1].name != "step_00000006", "the run finished before it was killed"
    resumed_from = int(saved[-1].name.split("_")[1])
    launch(command, tmp_path / "resumed.log")
    resumed = losses(out_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(resumed_from + 1, 7):
        assert resumed[step] == reference[step], f"step {step}"


def live_and_exported_energies(config_path: Path, out: Path) -> None:
    """Worker (every rank): train, take energies from the live ZeRO-3 engine, export on rank 0, compare there."""
    from ase.build import bulk, molecule

    from launch.cli import main as atomfm
    from model.calculator import AtomFMCalculator, atoms_to_batch
    from train.config import load_config
    from train.engine.distributed import init_distributed, shutdown_distributed
    from train.trainer import Trainer

    cfg = load_config(config_path)
    ctx = init_distributed(cfg.distributed, engine=cfg.engine)
    trainer = Trainer(cfg, ctx, use_wandb=False)
    result = trainer.run()
    # the trainer flushes subnormal floats to zero (train.trainer.flush_denormals): 1e-39 reads as 0
    flushed = bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)
    structures = [molecule("H2O"), bulk("Cu", "fcc", a=3.6, cubic=True), molecule("CH3CH2OH")]
    batch = atoms_to_batch(structures, CUTOFF, level_of_theory="gfn2-xtb").to(ctx.device)
    trainer.engine.module.eval()
    with torch.no_grad():
        live = trainer.engine.forward(batch, ("energy",), False)["energy"].tolist()
    ctx.barrier()
    if ctx.is_main:
        assert atomfm(["export", str(result.checkpoint), "--out", str(out / "export")]) == 0
        assert atomfm(["export", str(cfg.run_dir), "--out", str(out / "export_ema"), "--ema"]) == 0
        calc = AtomFMCalculator.from_checkpoint(
            out / "export", dtype=torch.float32, level_of_theory="gfn2-xtb"
        )
        exported = [float(calc.get_potential_energy(atoms)) for atoms in structures]
        (out / "energies.json").write_text(
            json.dumps(
                {"live": live, "exported": exported, "state": result.state.__dict__, "flushed": flushed}
            )
        )
    ctx.barrier()
    shutdown_distributed()


@pytest.fixture(scope="module")
def zero3_run(corpus, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("zero3")
    cfg = run_config(
        corpus,
        base / "run",
        run={"max_steps": 3, "checkpoint_every": 3},
        model={"conservative_forces": False},
        deepspeed={"zero_stage": 3},
        tasks={
            "denoise": {"fraction": 0.5},
            "masked_atoms": {"weight": 0.5},
            "energy": {},
            "forces": {"weight": 5.0},
            "contrast": {"weight": 0.1, "queue_size": 64},
        },
        optim={"lr": 2e-3, "warmup_steps": 1, "ema_decay": 1e-6, "grad_accum_steps": 2},
        debug={"poison_loss_at_step": 1},
    )
    worker = deepspeed_launcher(2, str(Path(__file__).resolve()), "zero3-export", str(cfg["path"]), str(base))
    result = launch(worker, base / "run.log")
    return cfg | {"base": base, "stdout": result.stdout}


def test_two_nodes_on_localhost_reproduce_the_single_node_losses(zero2_run, tmp_path):
    """Two torchrun agents, one process each, meet through a c10d rendezvous on localhost as a two-node job
    would; the global batch is the same as the single-node 2-rank run's, so the losses are too."""
    reference = losses(Path(zero2_run["run"]["out_dir"]))
    cfg = run_config(Path(zero2_run["data"]["corpus"][0]), tmp_path / "two_nodes")
    endpoint = f"127.0.0.1:{free_port()}"
    agents = []
    for node in range(2):
        command = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
            "--rdzv_id=atomfm-two-nodes", "--max_restarts=0",
            "-m", "launch.cli", "train", "--config", str(cfg["path"]), "--no-wandb",
        ]  # fmt: skip
        log = open(tmp_path / f"node{node}.log", "w")
        agents.append((subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=log, stderr=log), log))
    for agent, log in agents:
        assert agent.wait(timeout=300) == 0, (tmp_path / Path(log.name).name).read_text()[-3000:]
        log.close()
    two_nodes = losses(Path(cfg["run"]["out_dir"]))
    assert sorted(two_nodes) == sorted(reference) == [1, 2, 3, 4, 5, 6]
    for step, values in reference.items():
        assert two_nodes[step]["loss"] == pytest.approx(values["loss"], rel=1e-5), step


def test_zero3_direct_forces_and_denoising_under_the_deepspeed_launcher(zero3_run):
    run_dir = Path(zero3_run["run"]["out_dir"])
    history = read_metrics(run_dir)
    assert [r["step"] for r in history] == [1, 2, 3]
    assert all("loss/denoise" in r and "loss/forces" in r for r in history)
    final = list_checkpoints(run_dir)[-1]
    shards = sorted(p.name for p in (final / "ds" / "state").glob("zero_pp_rank_*_model_states.pt"))
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]


def test_nonfinite_loss_is_skipped_on_every_rank_and_the_run_goes_on(zero3_run):
    saved = json.loads((zero3_run["base"] / "energies.json").read_text())
    assert saved["flushed"], "the trainer left subnormal floats on (train.trainer.flush_denormals)"
    state = saved["state"]
    assert state["step"] == 3 and state["nonfinite_skipped"] == 1 and state["nonfinite_in_row"] == 0
    assert state["micro_batches"] == 6  # 2 per step; the poisoned one was replaced by the next batch
    assert "step 1: non-finite loss" in zero3_run["stdout"]


def test_zero3_export_gives_the_calculator_the_live_energies(zero3_run):
    energies = json.loads((zero3_run["base"] / "energies.json").read_text())
    assert_close(torch.tensor(energies["exported"]), torch.tensor(energies["live"]), rtol=1e-6, atol=1e-5)
    from safetensors.torch import load_file

    weights = load_file(zero3_run["base"] / "export" / "model.safetensors")
    ema = load_file(zero3_run["base"] / "export_ema" / "model.safetensors")
    assert set(weights) == set(ema)
    for name in weights:
        assert_close(ema[name], weights[name], rtol=1e-5, atol=1e-7, msg=name)


def test_ddp_engine_with_gradient_accumulation_under_torchrun(corpus, tmp_path):
    cfg = run_config(
        corpus,
        tmp_path / "ddp",
        engine="ddp",
        run={"max_steps": 2, "checkpoint_every": 2},
        optim={"grad_accum_steps": 2, "warmup_steps": 1},
    )
    launch(torchrun(2, "train", "--config", str(cfg["path"]), "--no-wandb"), tmp_path / "ddp.log")
    history = read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in history] == [1, 2]
    final = list_checkpoints(tmp_path / "ddp")[-1]
    assert (final / "ddp.pt").is_file()
    assert json.loads((final / "trainer_state.json").read_text())["micro_batches"] == 4

    from model.checkpoint_io import load_model

    saved = torch.load(final / "ddp.pt", weights_only=False)
    model = load_model(final)
    for name, value in model.state_dict().items():
        assert_close(value, saved["model"][name].float())


def test_nonfinite_losses_in_a_row_stop_the_run_with_a_checkpoint(corpus, tmp_path):
    cfg = run_config(
        corpus,
        tmp_path / "nan",
        deepspeed={"zero_stage": 0},
        run={"max_steps": 4, "max_nonfinite_in_row": 1},
        debug={"poison_loss_at_step": 1},
    )
    command = [sys.executable, "-m", "launch.cli", "train", "--config", str(cfg["path"]), "--no-wandb"]
    result = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "non-finite loss in 1 micro-batches in a row at step 1" in result.stderr
    (saved,) = list_checkpoints(tmp_path / "nan")
    assert saved.name == "step_00000001" and f"saved {saved}" in result.stderr


def test_single_process_without_a_launcher_stops_cleanly_on_sigterm(corpus, tmp_path):
    cfg = run_config(
        corpus,
        tmp_path / "single",
        run={"max_steps": 500, "checkpoint_every": 500},
        deepspeed={"zero_stage": 0},
    )
    command = [
        sys.executable,
        "-m",
        "launch.cli",
        "train",
        "--config",
        str(cfg["path"]),
        "--no-wandb",
        "optim.lr=1e-3",
    ]
    with open(tmp_path / "single.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=log, stderr=subprocess.STDOUT)
        metrics = tmp_path / "single" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "no step logged"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    (final,) = list_checkpoints(tmp_path / "single")
    step = json.loads((final / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 500 and final.name == f"step_{step:08d}"
    assert "stop requested" in (tmp_path / "single.log").read_text()
    saved = yaml.safe_load((tmp_path / "single" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 1e-3 and saved["deepspeed"]["zero_stage"] == 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if args[0] == "zero3-export":
        live_and_exported_energies(Path(args[1]), Path(args[2]))
