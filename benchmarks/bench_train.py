"""Training throughput (atoms/s) for 1 and 2 processes, per ZeRO stage, per model size, with scaling efficiency.

Each cell is a real run of ``atomfm train`` under torchrun (gloo on CPU, nccl on GPU) on a corpus (the demo
corpus by default): ``--steps`` optimiser steps, of which the first ``--warmup`` are not timed; throughput is
the atoms of the timed steps (all ranks) over their wall time. Scaling efficiency = atoms/s with 2
processes / (2 × atoms/s with 1). Prints a table and writes JSON.

    python benchmarks/bench_train.py --corpus data/demo --out results/bench_train.json
    python benchmarks/bench_train.py --sizes tiny --stages 2 3 --steps 12   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.logging import read_metrics  # noqa: E402


def run_config(args: argparse.Namespace, size: str, stage: int, out_dir: Path) -> dict:
    """Direct forces, denoising and masked atoms (the pretraining mix ZeRO-3 can run too)."""
    return {
        "run": {
            "name": f"bench-{size}-z{stage}",
            "out_dir": str(out_dir),
            "max_steps": args.steps,
            "log_every": 1,
            "checkpoint_every": 10**9,
            "keep_last": 1,
            "progress_bar": False,
            "resume": "never",
        },
        "data": {
            "corpus": [str(args.corpus)],
            "max_atoms": args.max_atoms,
            "cutoff": args.cutoff,
            "shuffle_buffer": 200,
            "num_workers": 1,
            "domain_weights": args.domain_weights,
        },
        "model": {
            "size": size,
            "overrides": {"cutoff": args.cutoff},
            "conservative_forces": args.conservative,
            "fit_reference_energies": False,
        },
        "tasks": {
            "dens": {"fraction": 0.25},
            "denoise": {"fraction": 0.25},
            "masked_atoms": {"weight": 0.2},
            "energy": {},
            "forces": {},
        },
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.0},
        "engine": "deepspeed",
        "precision": args.precision,
        "deepspeed": {"zero_stage": stage},
        "logging": {"wandb": False},
    }


def measure(args: argparse.Namespace, size: str, stage: int, nproc: int, workdir: Path) -> dict:
    out_dir = workdir / f"{size}-z{stage}-n{nproc}"
    config = workdir / f"{out_dir.name}.yaml"
    config.write_text(yaml.safe_dump(run_config(args, size, stage, out_dir)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "launch.cli",
        "train",
        "--config",
        str(config),
        "--no-wandb",
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        WANDB_MODE="disabled",
        PYTHONPATH=str(ROOT),
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cell = {"size": size, "zero_stage": stage, "processes": nproc, "wall_s": round(wall, 1)}
    if result.returncode != 0:
        return cell | {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    timed = [r for r in read_metrics(out_dir) if r["step"] > args.warmup]
    atoms = sum(r["atoms"] for r in timed)
    seconds = sum(r["window_s"] for r in timed)
    return cell | {
        "steps_timed": len(timed),
        "atoms": int(atoms),
        "atoms_per_s": atoms / seconds,
        "s_per_step": seconds / len(timed),
        "peak_memory_gib": max(r["memory_gib"] for r in timed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    parser.add_argument("--max-atoms", type=int, default=256, help="atom budget per batch and rank")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--conservative", action="store_true", help="forces as −∂E/∂x (not with ZeRO-3)")
    parser.add_argument(
        "--domain-weights",
        type=json.loads,
        default={"molecule": 0.5, "material": 0.5},
        help='JSON per-structure mix, e.g. \'{"molecule": 0.5, "material": 0.5}\'',
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_train.json")
    args = parser.parse_args()
    if not (args.corpus / "manifest.json").is_file():
        parser.error(f"no corpus at {args.corpus}: build it with `atomfm data demo --out {args.corpus}`")
    stages = [s for s in args.stages if not (args.conservative and s == 3)]
    cells = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for size in args.sizes:
            for stage in stages:
                for nproc in args.procs:
                    cell = measure(args, size, stage, nproc, Path(tmp))
                    cells.append(cell)
                    print(json.dumps(cell), flush=True)
    for cell in cells:
        single = next(
            (
                c
                for c in cells
                if c["size"] == cell["size"]
                and c["zero_stage"] == cell["zero_stage"]
                and c["processes"] == 1
                and "atoms_per_s" in c
            ),
            None,
        )
        if single and "atoms_per_s" in cell:
            cell["scaling_efficiency"] = cell["atoms_per_s"] / (cell["processes"] * single["atoms_per_s"])
    header = (
        f"{'size':6} {'ZeRO':>4} {'procs':>5} {'atoms/s':>9} {'s/step':>7} {'efficiency':>10} {'mem GiB':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for c in cells:
        if "error" in c:
            print(f"{c['size']:6} {c['zero_stage']:>4} {c['processes']:>5}  failed: {c['error']}")
            continue
        print(
            f"{c['size']:6} {c['zero_stage']:>4} {c['processes']:>5} {c['atoms_per_s']:>9.1f} "
            f"{c['s_per_step']:>7.2f} {c.get('scaling_efficiency', float('nan')):>10.2f} "
            f"{c['peak_memory_gib']:>8.2f}"
        )
    report = {
        "benchmark": "train_throughput",
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    tmp_out.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
