"""MACE (mace-torch) trained on a corpus's training split for a wall-clock budget: the reference model that
``bench_accuracy.py`` races atomfm against. Runs as its own process (one thread):

    OMP_NUM_THREADS=1 python benchmarks/mace_race.py --corpus data/bench_accuracy/molecule --budget-s 120 \
        --out runs/bench_accuracy/molecule/mace --channels 32 --max-atoms 256

The model is MACE's default recipe at ``channels`` x (0e + 1o) hidden features: ScaleShiftMACE, residual
interaction blocks, two interactions, correlation order 3, spherical harmonics to l = 3, 8 Bessel functions
with a degree-5 polynomial cutoff, radial MLP [64, 64, 64], readout MLP 16x0e; per-element E0s by least
squares on the training split (the fit atomfm uses for its reference energies); ``rms_forces_scaling``
(scale = RMS force, shift = mean per-atom energy after E0s); average neighbour count from the data.
Training follows ``mace run_train``'s defaults: loss = 1 x MSE(energy per atom) + 100 x MSE(force
components), Adam with AMSGrad, lr 0.01, weight decay 5e-7 on the interaction and product weights, gradient
norm clipped at 10, EMA of the weights (decay 0.99, MACE's ``--ema``). MACE's ReduceLROnPlateau (patience 50
epochs) cannot fire within minutes, so the learning rate is constant. Batches are packed up to ``max_atoms``
atoms (atomfm's batch budget) from a seeded shuffle of the training split, every epoch.

Writes ``model.pt`` (the EMA weights, for ``mace.calculators.MACECalculator``) and ``result.json`` (steps,
structures and atoms seen, parameters, settings, the loss curve against time) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.atomic_files import atomic_path, write_text_atomic  # noqa: E402
from data_pipeline.corpus_reader import read_split  # noqa: E402
from data_pipeline.packing import pack_by_atoms  # noqa: E402
from data_pipeline.schema import BadInputError, Structure  # noqa: E402
from data_pipeline.vocab import level_index  # noqa: E402
from model.reference_energies import fit_reference_energies_from_arrays  # noqa: E402

CURVE_EVERY_S = 10.0  # seconds between points of the loss curve


@dataclass
class MaceSettings:
    """The MACE model and its training (mace-torch's ``run_train`` defaults, unless noted)."""

    channels: int = 32
    max_L: int = 1  # hidden irreps channels x (0e + 1o)
    num_interactions: int = 2
    correlation: int = 3
    max_ell: int = 3
    r_max: float = 4.5  # Å; bench_accuracy sets atomfm's cutoff
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    radial_mlp: list[int] = field(default_factory=lambda: [64, 64, 64])
    mlp_irreps: str = "16x0e"
    lr: float = 0.01
    amsgrad: bool = True
    weight_decay: float = 5e-7
    ema_decay: float = 0.99  # MACE's --ema_decay (with --ema); 0 turns the EMA off
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    clip_grad: float = 10.0
    max_atoms: int = 256  # atoms per batch: atomfm's data.max_atoms
    dtype: str = "float32"
    seed: int = 0

    @property
    def hidden_irreps(self) -> str:
        return " + ".join(
            f"{self.channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(self.max_L + 1)
        )


def import_mace() -> tuple[Any, Any]:
    """(mace.modules, e3nn.o3), importing e3nn 0.4 (which mace-torch pins) with the slices its constants need
    under torch >= 2.6's safe unpickling."""
    with torch.serialization.safe_globals([slice]):
        from e3nn import o3
        from mace import modules

    return modules, o3


def build_mace(
    settings: MaceSettings,
    atomic_numbers: Sequence[int],
    *,
    e0s: np.ndarray | None = None,
    avg_num_neighbors: float = 20.0,
    scale: float = 1.0,
    shift: float = 0.0,
) -> torch.nn.Module:
    """ScaleShiftMACE over the elements ``atomic_numbers`` (sorted), in ``settings.dtype``."""
    modules, o3 = import_mace()
    torch.set_default_dtype(getattr(torch, settings.dtype))
    torch.manual_seed(settings.seed)
    residual = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with warnings.catch_warnings():  # e3nn 0.4's TorchScript code generation warns once per module
        warnings.simplefilter("ignore", UserWarning)
        return modules.ScaleShiftMACE(
            r_max=settings.r_max,
            num_bessel=settings.num_bessel,
            num_polynomial_cutoff=settings.num_polynomial_cutoff,
            max_ell=settings.max_ell,
            interaction_cls=residual,
            interaction_cls_first=residual,
            num_interactions=settings.num_interactions,
            num_elements=len(atomic_numbers),
            hidden_irreps=o3.Irreps(settings.hidden_irreps),
            MLP_irreps=o3.Irreps(settings.mlp_irreps),
            atomic_energies=np.zeros(len(atomic_numbers)) if e0s is None else e0s,
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=list(atomic_numbers),
            correlation=settings.correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(settings.radial_mlp),
            radial_type="bessel",
            atomic_inter_scale=scale,
            atomic_inter_shift=shift,
        )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def channels_for_parameters(settings: MaceSettings, atomic_numbers: Sequence[int], target: int) -> int:
    """The channel count whose MACE has the parameter count closest to ``target`` (bisection; the count
    grows monotonically with the channels)."""

    def params(channels: int) -> int:
        return count_parameters(build_mace(dataclasses.replace(settings, channels=channels), atomic_numbers))

    low, high = 1, 8
    while params(high) < target:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if params(mid) < target else (low, mid)
    return min((low, high), key=lambda c: abs(params(c) - target))


def fit_e0s(structures: Sequence[Structure], atomic_numbers: Sequence[int]) -> np.ndarray:
    """Per-element E0s [len(atomic_numbers)] eV: least squares E ≈ Σ_Z n_Z E0_Z over the labelled structures
    (atomfm's reference-energy fit; elements without data get 0)."""
    levels = {s.level_of_theory for s in structures}
    if len(levels) != 1:
        raise BadInputError(
            f"MACE has one energy head; the training split mixes levels of theory {sorted(levels)}",
            field="level_of_theory",
        )
    level = levels.pop()
    table = fit_reference_energies_from_arrays(
        [np.asarray(s.atomic_numbers) for s in structures],
        [float(s.energy) for s in structures],
        [level] * len(structures),
    ).numpy()
    return table[level_index(level), list(atomic_numbers)]


def to_atomic_data(s: Structure, z_table: Any, r_max: float) -> Any:
    """A structure as MACE's AtomicData graph (its neighbour list at ``r_max``), energy and forces attached."""
    from mace.data import AtomicData
    from mace.data.utils import Configuration

    periodic = s.is_periodic
    config = Configuration(
        atomic_numbers=np.asarray(s.atomic_numbers, dtype=np.int64),
        positions=np.asarray(s.positions, dtype=np.float64),
        properties={"energy": float(s.energy), "forces": np.asarray(s.forces, dtype=np.float64)},
        property_weights={"energy": 1.0, "forces": 1.0},
        cell=np.asarray(s.cell, dtype=np.float64) if periodic else np.zeros((3, 3)),
        pbc=tuple(bool(p) for p in s.pbc),
    )
    return AtomicData.from_config(config, z_table=z_table, cutoff=r_max)


def data_statistics(graphs: Sequence[Any], model_e0s: np.ndarray) -> tuple[float, float, float]:
    """(mean per-atom energy after E0s eV/atom, RMS force component eV/Å, mean neighbours per atom)."""
    per_atom, squares, components, neighbours, atoms = [], 0.0, 0, 0, 0
    for g in graphs:
        onehot = g.node_attrs.double().numpy()
        n = onehot.shape[0]
        per_atom.append((float(g.energy) - float(onehot.sum(0) @ model_e0s)) / n)
        forces = g.forces.double().numpy()
        squares += float((forces**2).sum())
        components += forces.size
        neighbours += int(g.edge_index.shape[1])
        atoms += n
    return float(np.mean(per_atom)), float(np.sqrt(squares / max(components, 1))), neighbours / atoms


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """MACE's optimiser groups: weight decay (an L2 term, under Adam) on the interactions' linear and skip
    weights and on the product blocks, none elsewhere."""
    decayed, plain = [], []
    for name, p in model.named_parameters():
        interaction = name.startswith("interactions.") and (
            "linear.weight" in name or "skip_tp_full.weight" in name
        )
        (decayed if interaction or name.startswith("products.") else plain).append(p)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def batches(graphs: Sequence[Any], max_atoms: int, seed: int) -> Iterator[list[Any]]:
    """Endless epochs: a seeded shuffle of ``graphs`` each epoch, packed up to ``max_atoms`` atoms."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(graphs))
        yield from pack_by_atoms((graphs[i] for i in order), max_atoms, natoms=lambda g: int(g.num_nodes))


def train_mace(
    structures: Sequence[Structure],
    settings: MaceSettings,
    budget_s: float,
    out_dir: str | Path,
    *,
    atomic_numbers: Sequence[int] | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train MACE on ``structures`` until ``budget_s`` seconds (from this call) or ``max_steps`` steps; save
    the EMA weights as ``out_dir/model.pt`` and the run's record as ``out_dir/result.json``; return it."""
    from mace.modules.loss import WeightedEnergyForcesLoss
    from mace.tools import AtomicNumberTable
    from mace.tools.torch_geometric import Batch
    from torch_ema import ExponentialMovingAverage

    start = time.monotonic()
    out = Path(out_dir)
    structures = [s for s in structures if s.energy is not None and s.forces is not None]
    if not structures:
        raise BadInputError("no structures with energy and forces to train MACE on", field="structures")
    zs = sorted(set(atomic_numbers or ()) | {int(z) for s in structures for z in s.atomic_numbers})
    e0s = fit_e0s(structures, zs)
    torch.set_default_dtype(getattr(torch, settings.dtype))
    z_table = AtomicNumberTable(zs)
    graphs = [to_atomic_data(s, z_table, settings.r_max) for s in structures]
    shift, scale, neighbours = data_statistics(graphs, e0s)
    model = build_mace(settings, zs, e0s=e0s, avg_num_neighbors=neighbours, scale=scale, shift=shift)
    loss_fn = WeightedEnergyForcesLoss(settings.energy_weight, settings.forces_weight)
    optimizer = torch.optim.Adam(
        parameter_groups(model, settings.weight_decay), lr=settings.lr, amsgrad=settings.amsgrad
    )
    ema = (
        ExponentialMovingAverage(model.parameters(), decay=settings.ema_decay) if settings.ema_decay else None
    )
    setup_s = time.monotonic() - start
    loop_start = time.monotonic()
    step = structures_seen = atoms_seen = 0
    curve: list[dict[str, float]] = []
    window: list[tuple[float, float, float]] = []
    next_point = CURVE_EVERY_S
    model.train()
    for group in batches(graphs, settings.max_atoms, settings.seed):
        batch = Batch.from_data_list(group)
        optimizer.zero_grad(set_to_none=True)
        pred = model(batch.to_dict(), training=True, compute_force=True)
        loss = loss_fn(batch, pred)
        loss.backward()
        if settings.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update()
        step += 1
        structures_seen += len(group)
        atoms_seen += int(batch.num_nodes)
        with torch.no_grad():
            natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(pred["energy"].dtype)
            energy_mse = float((((pred["energy"] - batch.energy) / natoms) ** 2).mean())
            force_mse = float(((pred["forces"] - batch.forces) ** 2).mean())
        window.append((float(loss.detach()), energy_mse, force_mse))
        elapsed = time.monotonic() - loop_start
        stopped_by = "max_steps" if max_steps is not None and step >= max_steps else None
        if time.monotonic() - start >= budget_s:
            stopped_by = "time_limit"
        done = stopped_by is not None
        if elapsed >= next_point or done:
            mean = np.mean(window, axis=0)
            curve.append(
                {
                    "step": step,
                    "time_s": round(elapsed, 2),
                    "loss": float(mean[0]),
                    "energy_rmse_mev_per_atom": 1000 * float(np.sqrt(mean[1])),
                    "force_rmse_mev_per_a": 1000 * float(np.sqrt(mean[2])),
                    "structures_seen": structures_seen,
                }
            )
            window, next_point = [], elapsed + CURVE_EVERY_S
        if done:
            break
    if ema is not None:
        ema.copy_to(model.parameters())
    model.eval()
    model_path = out / "model.pt"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_path) as tmp:
        torch.save(model, tmp)
    record = {
        "model": "mace",
        "hidden_irreps": settings.hidden_irreps,
        "parameters": count_parameters(model),
        "atomic_numbers": zs,
        "e0s": dict(zip(map(str, zs), e0s.round(6).tolist(), strict=True)),
        "avg_num_neighbors": neighbours,
        "scale_shift": [scale, shift],
        "settings": dataclasses.asdict(settings),
        "budget_s": budget_s,
        "setup_s": round(setup_s, 2),
        "train_s": round(time.monotonic() - loop_start, 2),
        "steps": step,
        "stopped_by": stopped_by,
        "structures_seen": structures_seen,
        "atoms_seen": atoms_seen,
        "epochs": structures_seen / len(graphs),
        "training_structures": len(graphs),
        "threads": torch.get_num_threads(),
        "model_path": str(model_path.resolve()),
        "curve": curve,
    }
    write_text_atomic(out / "result.json", json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="corpus folder; its train split is trained on")
    parser.add_argument("--budget-s", type=float, required=True, help="wall-clock seconds, setup included")
    parser.add_argument("--out", required=True, help="folder for model.pt and result.json")
    parser.add_argument("--channels", type=int, default=MaceSettings.channels)
    parser.add_argument("--r-max", type=float, default=MaceSettings.r_max, help="cutoff, Å")
    parser.add_argument("--max-atoms", type=int, default=MaceSettings.max_atoms, help="atoms per batch")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=MaceSettings.dtype)
    parser.add_argument(
        "--elements", default="", help="comma-separated atomic numbers to embed beyond the data's"
    )
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # subnormal floats flushed to zero, as atomfm's trainer does (train.trainer.flush_denormals)
    torch.set_flush_denormal(True)
    settings = MaceSettings(
        channels=args.channels, r_max=args.r_max, max_atoms=args.max_atoms, dtype=args.dtype, seed=args.seed
    )
    start = time.monotonic()
    structures = list(read_split([args.corpus], "train"))
    extra = [int(z) for z in args.elements.split(",") if z.strip()]
    record = train_mace(
        structures,
        settings,
        args.budget_s - (time.monotonic() - start),
        args.out,
        atomic_numbers=extra,
        max_steps=args.max_steps,
    )
    summary = {k: record[k] for k in ("steps", "structures_seen", "parameters", "train_s")}
    print(json.dumps({"finished": record["stopped_by"], **summary}), flush=True)


if __name__ == "__main__":
    main()
