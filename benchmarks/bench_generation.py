"""Generation on the demo corpus: a fine-tuned and a from-scratch diffusion sampler beside the training
molecules (the ceiling), a random-coordinate and a shuffled-type baseline, scored by the same code
(``eval/tasks/generation.py``), plus each sampler's held-out diffusion loss and the sampler's symmetry.

    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py \\
        --sampler finetuned=runs/diffusion_ft/export --sampler scratch=runs/diffusion_scratch/export \\
        --data data/demo --n 1000 --atoms 10-30 --steps 100

Stages (``--only``; each is skipped when its output exists, so the stages can run one at a time on a small
machine): ``sample:<name>`` (``atomfm generate`` of that sampler, scored), ``baseline:<name>``,
``held_out:<name>`` (``eval/generation/held_out.py`` on the val split's molecules), ``symmetry`` (the first
sampler in float64: rotating and mirroring the noise), ``table`` (reads the result files back, prints the
table, writes ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402
from eval.generation import cli as generate_cli  # noqa: E402
from eval.generation.baselines import BASELINES  # noqa: E402
from eval.generation.held_out import diffusion_loss_by_time  # noqa: E402
from eval.generation.reference import load_training_molecules  # noqa: E402
from eval.generation.sampler import DiffusionSampler  # noqa: E402
from model.checkpoint_io import load_model  # noqa: E402

COLUMNS = [
    ("atom_stability_edm", "atom stab. EDM"),
    ("molecule_stability_edm", "mol. stab. EDM"),
    ("atom_stability", "atom stab. RDKit"),
    ("molecule_stability", "mol. stab. RDKit"),
    ("validity_edm", "valid EDM"),
    ("validity", "valid RDKit"),
    ("connected", "connected"),
    ("uniqueness", "unique"),
    ("novelty", "novel"),
    ("posebusters", "PB pass"),
    ("xtb_relaxation_energy", "xTB ΔE kcal/mol"),
    ("xtb_relaxation_energy_per_atom", "xTB ΔE meV/atom"),
    ("xtb_rmsd", "xTB RMSD Å"),
]


def generate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    generate_cli.register(parser.add_subparsers())
    args = parser.parse_args(["generate", *argv])
    if args.func(args) != 0:
        raise SystemExit(f"atomfm generate {' '.join(argv)} failed")


def stage_sample(name: str, checkpoint: str, opts: argparse.Namespace) -> None:
    generate(
        ["--checkpoint", checkpoint, "--name", f"atomfm-diffusion-{name}", *common(opts), "--steps", str(opts.steps),
         "--out", str(opts.work / f"{name}.sdf")]
    )  # fmt: skip


def stage_baseline(name: str, opts: argparse.Namespace) -> None:
    generate(["--baseline", name, *common(opts), "--out", str(opts.work / f"baseline-{name}.sdf")])


def common(opts: argparse.Namespace) -> list[str]:
    return ["--data", *opts.data, "--n", str(opts.n), "--atoms", opts.atoms, "--seed", str(opts.seed),
            "--score", str(opts.work / "eval"), "--xtb-molecules", str(opts.xtb_molecules)]  # fmt: skip


def stage_held_out(name: str, checkpoint: str, opts: argparse.Namespace) -> dict[str, Any]:
    model = load_model(checkpoint)
    training = load_training_molecules(opts.data, "train")
    val = load_training_molecules(opts.data, "val").molecules
    val = [val[i] for i in np.random.default_rng(0).permutation(len(val))[: opts.held_out]]
    start = time.perf_counter()
    rows = diffusion_loss_by_time(DiffusionSampler(model, training.elements), val)
    return {"molecules": len(val), "rows": rows, "wall_time_s": round(time.perf_counter() - start, 1)}


def stage_symmetry(checkpoint: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Largest |Δ| (Å) between the molecule from transformed noise and the transformed molecule, float64."""
    from scipy.spatial.transform import Rotation

    model = load_model(checkpoint, dtype=torch.float64)
    training = load_training_molecules(opts.data, "train")
    sampler = DiffusionSampler(model, training.elements, steps=opts.symmetry_steps)
    sizes = training.draw_sizes(4, np.random.default_rng(1), (10, 30))
    rotation = torch.tensor(Rotation.random(random_state=3).as_matrix())
    mirror = rotation @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    plain = sampler.sample(sizes, 11)
    out: dict[str, Any] = {"molecules": len(sizes), "steps": opts.symmetry_steps, "sizes": sizes}
    for label, transform in (("rotation", rotation), ("mirror", mirror)):
        moved = sampler.sample(sizes, 11, transform=transform)
        same_types = all(np.array_equal(a.numbers, b.numbers) for a, b in zip(plain, moved, strict=True))
        error = max(
            float(np.abs(b.positions - a.positions @ transform.numpy().T).max())
            for a, b in zip(plain, moved, strict=True)
        )
        scale = max(float(np.abs(a.positions).max()) for a in plain)
        out[label] = {"same_types": same_types, "max_abs_error_A": error, "max_coordinate_A": scale}
    return out


def table(opts: argparse.Namespace) -> dict[str, Any]:
    rows = {}
    for path in sorted((opts.work / "eval").glob("*generation*.json")):
        record = json.loads(path.read_text())
        rows[record["model"]["name"]] = {
            "metrics": record["metrics"]["molecule"],
            "valence_guard": record["details"].get("valence_guard"),
            "generation_wall_time_s": record["details"].get("generation_wall_time_s"),
            "scoring_wall_time_s": record.get("wall_time_s"),
        }
    header = "| set | n | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 2)]
    for name, row in rows.items():
        m = row["metrics"]
        cells = [_cell(m.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {name} | {m['molecule_stability']['n']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return rows


def _cell(metric: dict[str, Any] | None) -> str:
    if metric is None or metric["value"] is None or not np.isfinite(metric["value"]):
        return "—"  # NaN: nothing to average (no valid molecule reached xTB)
    digits = 2 if metric["unit"] == "Å" else 1
    suffix = f" (n={metric['n']})" if metric["unit"] in ("kcal/mol", "meV/atom", "Å") else ""
    return f"{metric['value']:.{digits}f}{suffix}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sampler", action="append", default=[], metavar="NAME=CKPT", help="a diffusion checkpoint"
    )
    p.add_argument("--data", nargs="+", default=["data/demo"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--atoms", default="10-30")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--xtb-molecules", type=int, default=100)
    p.add_argument("--held-out", type=int, default=128, help="val-split molecules for the held-out loss")
    p.add_argument("--symmetry-steps", type=int, default=20)
    p.add_argument("--work", type=Path, default=Path("runs/generation"))
    p.add_argument("--out", type=Path, default=Path("results/bench_generation.json"))
    p.add_argument("--only", nargs="*", default=None, help="stages to run (default: all)")
    opts = p.parse_args()
    samplers = dict(item.split("=", 1) for item in opts.sampler)
    opts.work.mkdir(parents=True, exist_ok=True)
    state_path = opts.work / "bench_generation_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    stages = [f"sample:{n}" for n in samplers] + [f"baseline:{b}" for b in BASELINES]
    stages += [f"held_out:{n}" for n in samplers] + ["symmetry", "table"]
    for stage in opts.only or stages:
        kind, _, name = stage.partition(":")
        if stage in state and kind != "table":
            print(f"{stage}: done ({state[stage].get('wall_time_s', '?')} s)")
            continue
        start = time.perf_counter()
        if kind == "sample":
            stage_sample(name, samplers[name], opts)
            result: dict[str, Any] = {}
        elif kind == "baseline":
            stage_baseline(name, opts)
            result = {}
        elif kind == "held_out":
            result = stage_held_out(name, samplers[name], opts)
        elif kind == "symmetry":
            result = stage_symmetry(next(iter(samplers.values())), opts)
        else:
            result = {"rows": table(opts)}
        result["wall_time_s"] = round(time.perf_counter() - start, 1)
        # read again: another stage may have run
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        state[stage] = result
        write_text_atomic(state_path, json.dumps(state, indent=1))
        print(f"{stage}: {result['wall_time_s']} s", flush=True)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(opts.out, json.dumps(state, indent=1))


if __name__ == "__main__":
    main()
