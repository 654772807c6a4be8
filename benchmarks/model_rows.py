"""One row of the model benchmark, run in its own process: one model on one structure set, timed and
measured per mode (``infer``, ``train_direct``, ``train_conservative``), each mode's result written to the
row's JSON file as soon as it is measured.

    python benchmarks/model_rows.py '<row spec JSON>' out.json        # what bench_model.py runs per row

A mode that runs out of memory is recorded as such (``out_of_memory``) and the next mode still runs; if the
process dies, the modes already written survive in ``out.json``. Memory per mode: the peak resident set of
the process during that mode (the peak is reset before it; weights, graph and interpreter included), and on
CUDA the allocator's peak.

Models (peer models are imported here only, never by the project's packages):

- ``atomfm``: ``model_config(size, lmax=..., **overrides)``, in float32.
- ``mace``: mace-torch's ScaleShiftMACE, two residual interactions, correlation 3, 8 Bessel functions,
  polynomial cutoff 5, at atomfm's cutoff. ``layout: "equal_channels"``: hidden ``Cx0e + Cx1o + Cx2e`` at
  atomfm's channels, spherical harmonics to min(lmax, 3); ``layout: "medium"``: MACE-MP's medium layout,
  hidden ``Cx0e + Cx1o`` with spherical harmonics to 3, C chosen so that the parameter count is closest to
  ``target_parameters`` (MACE has no direct-force head: its ``train_direct`` is an energy-only step).
- ``eqv2``: fairchem 1.x's EquiformerV2 backbone + energy head + direct-force head at atomfm's shape.
"""

from __future__ import annotations

import gc
import importlib
import importlib.machinery
import importlib.util
import json
import sys
import traceback
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_structures  # noqa: E402
from memory_guard import limit_own_memory, reset_peak_rss, status_bytes  # noqa: E402
from timing import median_seconds_per_call  # noqa: E402

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402
from model.atomfm import AtomFM, model_config  # noqa: E402
from model.calculator import atoms_to_batch  # noqa: E402

MODES = ("infer", "train_direct", "train_conservative")
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "cannot allocate memory")
REPLICA_SPACING = 10.0  # Å between replicated molecules: beyond every model's cutoff


@dataclass
class Workload:
    """A built model and its three steps on one batch."""

    model: torch.nn.Module
    num_atoms: int
    steps: dict[str, Callable[[], Any]]  # mode -> one call (training modes include the backward)
    info: dict[str, Any] = field(default_factory=dict)


def structures_for(spec: dict[str, Any]) -> list[Atoms]:
    """The row's structure set (``bench_structures``); with ``spec["copies"]`` (the largest-structure search)
    that many cubic silicon cells for the crystal, else that many copies of the set as one structure."""
    quick = spec.get("quick", False)
    system = spec["system"]
    if system == "ligands":
        atoms = bench_structures.ligands(8 if quick else 32)
    elif system == "protein":
        atoms = bench_structures.protein(1000 if quick else None)
    elif system == "crystal":
        atoms = bench_structures.crystal()
    else:
        raise ValueError(f"unknown system {system!r}; expected ligands, protein or crystal")
    copies = int(spec.get("copies", 1))
    if system == "crystal" and "copies" in spec:
        return bench_structures.crystal_cells(copies)
    return atoms if copies == 1 else [bench_structures.replicate(atoms, copies, REPLICA_SPACING)]


def training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    return step


def atomfm_workload(spec: dict[str, Any], structures: list[Atoms], device: torch.device) -> Workload:
    torch.manual_seed(0)
    cfg = model_config(spec.get("size", "tiny"), lmax=spec["lmax"], **spec.get("overrides", {}))
    model = AtomFM(cfg).to(device)
    batch = atoms_to_batch(structures, cfg.backbone.cutoff, level_of_theory="gfn2-xtb", device=device)

    def loss(outputs: tuple[str, str], conservative: bool) -> torch.Tensor:
        out = model(batch, outputs, conservative=conservative)
        return out["energy"].square().sum() + out[outputs[1]].square().sum()

    steps = {
        "infer": lambda: model(batch, ("energy", "forces"), conservative=True),
        "train_direct": training_step(model, lambda: loss(("energy", "forces_direct"), False)),
        "train_conservative": training_step(model, lambda: loss(("energy", "forces"), True)),
    }
    b = cfg.backbone
    return Workload(
        model,
        int(batch.pos.shape[0]),
        steps,
        {
            "edges": int(batch.edge_index.shape[1]),
            "shape": f"{b.num_layers} layers, lmax {b.lmax}, mmax {b.mmax}, {b.channels} channels",
        },
    )


def import_mace() -> types.ModuleType:
    # e3nn 0.4 (which mace-torch pins) stores its constants with slices, which torch >= 2.6 only unpickles
    # when allowed
    with torch.serialization.safe_globals([slice]):
        importlib.import_module("e3nn.o3")
        return importlib.import_module("mace.modules")


def build_mace(
    hidden: str, max_ell: int, cutoff: float, zs: list[int], interactions: int = 2
) -> torch.nn.Module:
    modules = import_mace()
    from e3nn import o3

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with warnings.catch_warnings():  # e3nn 0.4's TorchScript code generation warns once per module
        warnings.simplefilter("ignore", UserWarning)
        return modules.ScaleShiftMACE(
            r_max=cutoff,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=block,
            interaction_cls_first=block,
            num_interactions=interactions,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(zs)),
            avg_num_neighbors=30.0,
            atomic_numbers=zs,
            correlation=3,
            gate=torch.nn.functional.silu,
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mace_medium_channels(target: int, cutoff: float, zs: list[int]) -> int:
    """Channels C of hidden ``Cx0e + Cx1o`` (spherical harmonics to 3) whose parameter count is closest to
    ``target``. The count is a quadratic in C (C x C linear maps, C-wide embeddings and contractions), so
    three small builds give it exactly."""
    probes = (8, 16, 24)
    counts = [count(build_mace(f"{c}x0e + {c}x1o", 3, cutoff, zs)) for c in probes]
    quadratic = np.polynomial.Polynomial.fit(probes, counts, 2).convert()
    roots = [r.real for r in (quadratic - target).roots() if abs(r.imag) < 1e-9 and r.real > 0]
    best = round(max(roots))
    return min((best - 1, best, best + 1), key=lambda c: abs(quadratic(c) - target))


def mace_workload(spec: dict[str, Any], structures: list[Atoms], device: torch.device) -> Workload:
    from mace import data as mace_data
    from mace import tools
    from mace.tools import torch_geometric as mace_geometric

    cutoff, lmax = spec["cutoff"], spec["lmax"]
    zs = sorted({int(z) for atoms in structures for z in atoms.numbers})
    if spec["layout"] == "equal_channels":
        c = spec["channels"]
        hidden = " + ".join(f"{c}x{deg}{'e' if deg % 2 == 0 else 'o'}" for deg in range(min(lmax, 2) + 1))
        max_ell = min(lmax, 3)
    else:
        c = mace_medium_channels(spec["target_parameters"], cutoff, zs)
        hidden, max_ell = f"{c}x0e + {c}x1o", 3
    torch.manual_seed(0)
    interactions = int(spec.get("interactions", 2))
    model = build_mace(hidden, max_ell, cutoff, zs, interactions).to(device)
    table = tools.AtomicNumberTable(zs)
    graphs = [
        mace_data.AtomicData.from_config(mace_data.config_from_atoms(atoms), z_table=table, cutoff=cutoff)
        for atoms in structures
    ]
    batch = next(iter(mace_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs)))).to(device)

    def loss(forces: bool) -> torch.Tensor:
        out = model(batch.to_dict(), training=True, compute_force=forces)
        return out["energy"].square().sum() + (out["forces"].square().sum() if forces else 0.0)

    steps = {
        "infer": lambda: model(batch.to_dict(), training=False, compute_force=True),
        "train_direct": training_step(model, lambda: loss(False)),
        "train_conservative": training_step(model, lambda: loss(True)),
    }
    return Workload(
        model,
        int(batch.positions.shape[0]),
        steps,
        {
            "edges": int(batch.edge_index.shape[1]),
            "shape": f"{interactions} interactions, hidden {hidden}, max_ell {max_ell}",
            "direct_is_energy_only": True,
        },
    )


def import_equiformer_v2() -> None:
    """Import fairchem 1.x's EquiformerV2. fairchem imports ``torch_scatter.scatter``, a compiled extension
    with no build for current torch: when it is missing, torch_geometric's pure-torch ``scatter`` stands in
    (same arguments; torch_scatter's default ``dim`` is -1)."""
    if "torch_scatter" not in sys.modules and importlib.util.find_spec("torch_scatter") is None:
        from torch_geometric.utils import scatter as pyg_scatter

        def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):  # noqa: ANN001, ANN202
            if out is not None:
                raise NotImplementedError("torch_scatter stand-in: out= is not supported")
            return pyg_scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)

        shim = types.ModuleType("torch_scatter")
        shim.__spec__ = importlib.machinery.ModuleSpec("torch_scatter", None)
        shim.scatter = scatter
        sys.modules["torch_scatter"] = shim
    # e3nn 0.4 (shared with MACE) unpickles slices: see import_mace
    with torch.serialization.safe_globals([slice]):
        importlib.import_module("fairchem.core.models.equiformer_v2.equiformer_v2")


def eqv2_workload(spec: dict[str, Any], structures: list[Atoms], device: torch.device) -> Workload:
    """fairchem 1.x's EquiformerV2 (backbone + scalar energy head + direct vector force head) at atomfm's
    channels, lmax, mmax, layers, heads, attention and FFN widths (attention: ``attn_channels`` hidden,
    ``attn_channels / num_heads`` alpha and value channels per head); fairchem's other defaults (512 Gaussian
    distance bases, 128 edge channels, separable S2 activations, RMS norm), dropout and drop path off. The
    graph is every pair within the cutoff: built by fairchem (``radius_graph_pbc``) for periodic structures,
    passed in as ``edge_index`` for molecules (fairchem's molecular path calls torch_geometric's
    ``radius_graph``, which needs pyg-lib)."""
    import_equiformer_v2()
    from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
    from fairchem.core.models.equiformer_v2.heads import EqV2ScalarHead, EqV2VectorHead
    from torch_geometric.data import Batch, Data

    shape, cutoff = spec["shape"], spec["cutoff"]
    periodic = any(bool(atoms.pbc.any()) for atoms in structures)
    graphs = []
    for atoms in structures:
        pos = torch.tensor(atoms.positions, dtype=torch.float32)
        graph = Data(
            pos=pos,
            atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long),
            cell=torch.tensor(np.asarray(atoms.cell), dtype=torch.float32).view(1, 3, 3),
            pbc=torch.tensor(atoms.pbc).view(1, 3),
            natoms=torch.tensor([len(atoms)]),
        )
        if not periodic:
            i, j = torch.nonzero(torch.cdist(pos, pos) < cutoff, as_tuple=True)
            keep = i != j
            graph.edge_index = torch.stack([j[keep], i[keep]])  # fairchem: row 0 source j, row 1 target i
        graphs.append(graph)
    batch = Batch.from_data_list(graphs).to(device)
    num_atoms = int(batch.pos.shape[0])

    torch.manual_seed(0)
    heads = shape["num_heads"]
    backbone = EquiformerV2Backbone(
        use_pbc=periodic,
        regress_forces=True,
        otf_graph=periodic,
        max_neighbors=10_000,  # every neighbour within the cutoff, as atomfm and MACE use
        max_radius=cutoff,
        max_num_elements=100,
        num_layers=shape["num_layers"],
        sphere_channels=shape["channels"],
        attn_hidden_channels=shape["attn_channels"],
        num_heads=heads,
        attn_alpha_channels=shape["attn_channels"] // heads,  # fairchem's are per head, atomfm's split
        attn_value_channels=shape["attn_channels"] // heads,
        ffn_hidden_channels=shape["ffn_channels"],
        lmax_list=[spec["lmax"]],
        mmax_list=[shape["mmax"]],
        alpha_drop=0.0,
        drop_path_rate=0.0,
        avg_num_nodes=num_atoms / len(structures),
        avg_degree=30.0,
    )
    model = torch.nn.ModuleDict(
        {"backbone": backbone, "energy": EqV2ScalarHead(backbone), "forces": EqV2VectorHead(backbone)}
    ).to(device)

    def energy_and_forces(conservative: bool, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch.pos.requires_grad_(conservative)
        emb = model["backbone"](batch)
        energy = model["energy"](batch, emb)["energy"]
        if conservative:
            (grad,) = torch.autograd.grad(energy.sum(), batch.pos, create_graph=create_graph)
            return energy, -grad
        return energy, model["forces"](batch, emb)["forces"]

    def loss(conservative: bool) -> torch.Tensor:
        energy, forces = energy_and_forces(conservative, create_graph=True)
        return energy.square().sum() + forces.square().sum()

    steps = {
        "infer": lambda: energy_and_forces(True, create_graph=False),
        "train_direct": training_step(model, lambda: loss(False)),
        "train_conservative": training_step(model, lambda: loss(True)),
    }
    with torch.no_grad():
        edges = int(backbone.generate_graph(batch).edge_index.shape[1])
    return Workload(
        model,
        num_atoms,
        steps,
        {"edges": edges, "shape": f"{shape['num_layers']} layers, lmax {spec['lmax']}, mmax {shape['mmax']}"},
    )


WORKLOADS = {"atomfm": atomfm_workload, "mace": mace_workload, "eqv2": eqv2_workload}


def measure_mode(workload: Workload, mode: str, device: torch.device, repeat: int) -> dict[str, Any]:
    """Median seconds of one call of ``mode``, atoms/s, and the peak memory during it."""
    workload.model.train(mode != "infer")
    gc.collect()
    rss_before = status_bytes("self", "VmRSS")
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first: list[float] = []
    seconds = median_seconds_per_call(workload.steps[mode], device, repeat, first=first)
    result = {
        "seconds": seconds,
        "first_call_s": first[0],  # the warm-up call: with ``compile``, compiling included
        "atoms_per_s": workload.num_atoms / seconds,
        "peak_rss_bytes": status_bytes("self", "VmHWM"),
        "rss_before_bytes": rss_before,
    }
    if device.type == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or any(text in str(err).lower() for text in OUT_OF_MEMORY)


def run_row(spec: dict[str, Any], out: Path) -> None:
    """Build the row's workload and measure each mode of ``spec["modes"]``, writing ``out`` after each."""
    device = torch.device(spec.get("device", "cpu"))
    # every row alike: subnormal floats flushed to zero, as atomfm's trainer does (train.trainer.flush_denormals)
    torch.set_flush_denormal(True)
    if spec.get("memory_limit_bytes"):
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(spec["memory_limit_bytes"] / total, 1.0), device)
        else:
            limit_own_memory(spec["memory_limit_bytes"])
    result: dict[str, Any] = {"modes": {}}

    def write() -> None:
        write_text_atomic(out, json.dumps(result, indent=1))

    try:
        structures = structures_for(spec)
        workload = WORKLOADS[spec["model"]](spec, structures, device)
    except Exception as err:  # noqa: BLE001 - a row that cannot be built is recorded, not fatal
        result["error"] = f"{type(err).__name__}: {err}"
        result["out_of_memory"] = out_of_memory(err)
        result["traceback"] = traceback.format_exc(limit=-3)
        write()
        return
    result.update(atoms=workload.num_atoms, parameters=count(workload.model), **workload.info)
    write()
    for mode in spec.get("modes", MODES):
        try:
            result["modes"][mode] = measure_mode(workload, mode, device, int(spec.get("repeat", 1)))
        except (RuntimeError, MemoryError) as err:
            workload.model.zero_grad(set_to_none=True)
            result["modes"][mode] = {
                "error": f"{type(err).__name__}: {str(err)[:300]}",
                "out_of_memory": out_of_memory(err),
                "peak_rss_bytes": status_bytes("self", "VmHWM"),
            }
        write()


if __name__ == "__main__":
    run_row(json.loads(sys.argv[1]), Path(sys.argv[2]))
