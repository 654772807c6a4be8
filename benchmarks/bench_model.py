"""Full-model throughput and memory: atoms/s of inference and of training steps, per size and lmax, on a
batch of real drug-like molecules, a real protein and a silicon crystal, beside MACE and EquiformerV2 when
they import.

    OMP_NUM_THREADS=1 python benchmarks/bench_model.py --quick          # a few minutes on 2 CPU cores
    python benchmarks/bench_model.py --sizes tiny small base --lmax 2 4 --device cuda

Columns: ``infer`` = energy + conservative forces in eval mode (what MD and relaxations run);
``train direct`` = energy + direct forces, loss backward (pretraining step); ``train cons.`` = energy +
conservative forces with the graph kept, loss backward (force-field fine-tuning). Memory: the CUDA peak of
the training step on GPUs; on CPU the bytes autograd saves for the backward pass plus the weights (the
process's peak is not resettable there). A size is skipped when its analytic activation estimate does not
fit the device's memory.

Structures (all shipped in installed packages): 16 ligands of the PDB Chemical Component Dictionary with
hydrogens (biotite), cobrotoxin with hydrogens (937 atoms, MDAnalysisTests; ``--quick``: the 137-atom
Ala6-Pro-Ala6 helix), and rattled diamond silicon (3x3x3 cubic cells, 216 atoms; ``--quick``: 64).

MACE (mace-torch) and fairchem's EquiformerV2 (fairchem-core 1.10, the last release that ships it, installed
without its torch 2.4 pin) run at the same channels, lmax and cutoff when their packages import in this
interpreter; the JSON's ``baselines`` says which ran. MACE installs beside atomfm (``make setup-bench``), so
the project's own environment runs atomfm and MACE; EquiformerV2 runs from a separate environment that
holds all three (see docs/model.md, "Benchmark").
Prints a table and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import seconds_per_call  # noqa: E402

from data_pipeline.atomic_files import write_text_atomic
from model.activation_memory import estimate_activation_memory, measure_saved_activations  # noqa: E402
from model.atomfm import AtomFM, model_config  # noqa: E402
from model.calculator import atoms_to_batch  # noqa: E402
from model.sizes import SIZES  # noqa: E402

LIGANDS = (
    "ATP",
    "NAD",
    "FAD",
    "HEM",
    "SAM",
    "GTP",
    "ADP",
    "COA",
    "PLP",
    "FMN",
    "NAP",
    "STU",
    "IMN",
    "BEN",
    "TRP",
    "CAF",
)


def ligand_batch(count: int) -> list[Atoms]:
    import biotite.structure.info as ccd

    out = []
    for code in LIGANDS[:count]:
        residue = ccd.residue(code)
        out.append(
            Atoms(symbols=[e.capitalize() for e in residue.element], positions=residue.coord.astype(float))
        )
    return out


def protein(quick: bool) -> list[Atoms]:
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    atoms = ase.io.read(data / ("A6PA6_alpha.pdb" if quick else "cobrotoxin_dry_neutral_0.pdb"))
    atoms.info["domain"] = "protein"
    return [atoms]


def crystal(quick: bool) -> list[Atoms]:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2 if quick else 3)
    atoms.rattle(0.05, seed=0)
    return [atoms]


def systems(quick: bool) -> dict[str, list[Atoms]]:
    return {"ligands": ligand_batch(4 if quick else 16), "protein": protein(quick), "crystal": crystal(quick)}


def training_memory(model: torch.nn.Module, step: Callable[[], Any], device: torch.device) -> int:
    """CUDA peak bytes of one training step, or on CPU the saved activations plus the weights."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return measure_saved_activations(model, step) + weights


def time_steps(
    model: torch.nn.Module,
    infer: Callable[[], Any],
    direct_loss: Callable[[], torch.Tensor],
    conservative_loss: Callable[[], torch.Tensor],
    num_atoms: int,
    device: torch.device,
    repeat: int,
) -> dict[str, float]:
    def train(loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            loss().backward()

        return step

    model.eval()
    infer_s = seconds_per_call(infer, device, repeat)
    model.train()
    direct_s = seconds_per_call(train(direct_loss), device, repeat)
    conservative_s = seconds_per_call(train(conservative_loss), device, repeat)
    memory = training_memory(model, conservative_loss, device)
    return {
        "infer_atoms_per_s": num_atoms / infer_s,
        "train_direct_atoms_per_s": num_atoms / direct_s,
        "train_conservative_atoms_per_s": num_atoms / conservative_s,
        "memory_bytes": memory,
    }


def bench_atomfm(
    size: str, lmax: int, structures: list[Atoms], device: torch.device, repeat: int
) -> dict[str, Any]:
    mmax = min(SIZES[size].get("mmax", lmax), lmax)
    torch.manual_seed(0)
    model = AtomFM(model_config(size, lmax=lmax, mmax=mmax)).to(device)
    batch = atoms_to_batch(
        structures, model.config.backbone.cutoff, level_of_theory="gfn2-xtb", device=device
    )

    def loss(outputs: tuple[str, ...], conservative: bool) -> torch.Tensor:
        out = model(batch, outputs, conservative=conservative)
        return out["energy"].square().sum() + out[outputs[1]].square().sum()

    result = time_steps(
        model,
        lambda: model(batch, ("energy", "forces"), conservative=True),
        lambda: loss(("energy", "forces_direct"), False),
        lambda: loss(("energy", "forces"), True),
        int(batch.pos.shape[0]),
        device,
        repeat,
    )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "edges": int(batch.edge_index.shape[1]),
        **result,
    }


def bench_mace(
    channels: int, lmax: int, cutoff: float, structures: list[Atoms], device: torch.device, repeat: int
) -> dict[str, Any]:
    """MACE with ``channels`` x (0e + 1o + 2e) hidden features (its usual max L = 2), spherical harmonics to
    ``lmax`` (at most 3: higher needs cuequivariance's Clebsch-Gordan tables), two interactions, correlation
    order 3."""
    # e3nn 0.4 (which mace-torch pins) stores its constants with slices, which torch >= 2.6 only unpickles
    # when allowed
    with torch.serialization.safe_globals([slice]):
        from e3nn import o3
        from mace import data as mace_data
        from mace import modules, tools
        from mace.tools import torch_geometric as mace_geometric

    zs = sorted({int(z) for atoms in structures for z in atoms.numbers})
    table = tools.AtomicNumberTable(zs)
    hidden = " + ".join(f"{channels}x{deg}{'e' if deg % 2 == 0 else 'o'}" for deg in range(min(lmax, 2) + 1))
    torch.manual_seed(0)
    with warnings.catch_warnings():  # e3nn 0.4's TorchScript code generation warns once per module
        warnings.simplefilter("ignore", UserWarning)
        model = modules.ScaleShiftMACE(
            r_max=cutoff,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=min(lmax, 3),
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2,
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
        ).to(device)
    configs = [mace_data.config_from_atoms(atoms) for atoms in structures]
    graphs = [mace_data.AtomicData.from_config(c, z_table=table, cutoff=cutoff) for c in configs]
    batch = next(iter(mace_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs)))).to(device)

    def run(training: bool) -> dict[str, torch.Tensor]:
        return model(batch.to_dict(), training=training, compute_force=True)

    def conservative_loss() -> torch.Tensor:
        out = run(True)
        return out["energy"].square().sum() + out["forces"].square().sum()

    def energy_loss() -> torch.Tensor:
        return model(batch.to_dict(), training=True, compute_force=False)["energy"].square().sum()

    result = time_steps(
        model,
        lambda: run(False),
        energy_loss,
        conservative_loss,
        int(batch.positions.shape[0]),
        device,
        repeat,
    )
    return {"parameters": sum(p.numel() for p in model.parameters()), "hidden_irreps": hidden, **result}


def import_equiformer_v2() -> None:
    """Import fairchem 1.x's EquiformerV2. fairchem imports ``torch_scatter.scatter``, a compiled extension
    with no build for current torch: when it is missing, torch_geometric's pure-torch ``scatter`` stands in
    (same arguments; torch_scatter's default ``dim`` is -1)."""
    if "torch_scatter" not in sys.modules and importlib.util.find_spec("torch_scatter") is None:
        import types

        from torch_geometric.utils import scatter as pyg_scatter

        def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):  # noqa: ANN001, ANN202
            if out is not None:
                raise NotImplementedError("torch_scatter stand-in: out= is not supported")
            return pyg_scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)

        shim = types.ModuleType("torch_scatter")
        shim.__spec__ = importlib.machinery.ModuleSpec("torch_scatter", None)
        shim.scatter = scatter
        sys.modules["torch_scatter"] = shim
    # e3nn 0.4 (shared with MACE) unpickles slices: see bench_mace
    with torch.serialization.safe_globals([slice]):
        importlib.import_module("fairchem.core.models.equiformer_v2.equiformer_v2")


def bench_equiformer_v2(
    channels: int,
    lmax: int,
    cutoff: float,
    structures: list[Atoms],
    device: torch.device,
    repeat: int,
    *,
    mmax: int | None = None,
    num_layers: int = 4,
    num_heads: int = 4,
    attn_channels: int = 32,
    ffn_channels: int = 128,
) -> dict[str, Any]:
    """fairchem 1.x's EquiformerV2 (backbone + scalar energy head + direct vector force head) at the same
    channels, lmax, mmax (default min(lmax, 2)), layers, heads, attention and FFN widths as atomfm's size
    (attention: ``attn_channels`` hidden, ``attn_channels / num_heads`` alpha and value channels per head);
    fairchem's other defaults (512 Gaussian distance bases, 128 edge channels, separable S2 activations, RMS
    norm), dropout and drop path off. The graph is every pair within ``cutoff``: built by fairchem
    (``radius_graph_pbc``) for periodic structures, passed in as ``edge_index`` for molecules (fairchem's
    molecular path calls torch_geometric's ``radius_graph``, which needs pyg-lib)."""
    import_equiformer_v2()
    from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
    from fairchem.core.models.equiformer_v2.heads import EqV2ScalarHead, EqV2VectorHead
    from torch_geometric.data import Batch, Data

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
    backbone = EquiformerV2Backbone(
        use_pbc=periodic,
        regress_forces=True,
        otf_graph=periodic,
        max_neighbors=10_000,  # every neighbour within the cutoff, as atomfm and MACE use
        max_radius=cutoff,
        max_num_elements=100,
        num_layers=num_layers,
        sphere_channels=channels,
        attn_hidden_channels=attn_channels,
        num_heads=num_heads,
        attn_alpha_channels=attn_channels // num_heads,  # fairchem's are per head, atomfm's split over heads
        attn_value_channels=attn_channels // num_heads,
        ffn_hidden_channels=ffn_channels,
        lmax_list=[lmax],
        mmax_list=[min(lmax, 2) if mmax is None else mmax],
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

    result = time_steps(
        model,
        lambda: energy_and_forces(True, create_graph=False),
        lambda: loss(False),
        lambda: loss(True),
        num_atoms,
        device,
        repeat,
    )
    batch.pos.requires_grad_(False)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "edges": int(backbone.generate_graph(batch).edge_index.shape[1]),
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny size, small structures, one timed repeat")
    parser.add_argument("--sizes", nargs="+", default=None, help=f"sizes from {', '.join(SIZES)}")
    parser.add_argument("--lmax", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per measurement")
    parser.add_argument("--no-baselines", action="store_true", help="skip MACE / EquiformerV2")
    parser.add_argument("--out", default="results/bench_model.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = args.sizes or (["tiny"] if args.quick else list(SIZES))
    repeat = args.repeat or (1 if args.quick else 3)
    structures = systems(args.quick)
    budget = available_memory(device)

    rows: list[dict[str, Any]] = []
    for size in sizes:
        for lmax in args.lmax:
            cfg = model_config(size, lmax=lmax, mmax=min(SIZES[size].get("mmax", lmax), lmax))
            for name, atoms in structures.items():
                row = {
                    "model": "atomfm",
                    "size": size,
                    "lmax": lmax,
                    "system": name,
                    "atoms": sum(len(a) for a in atoms),
                }
                edges = atoms_to_batch(atoms, cfg.backbone.cutoff).edge_index.shape[1]
                # conservative-force training keeps ~3x the activations of the analytic (direct) estimate
                needed = (
                    3
                    * estimate_activation_memory(cfg.backbone, row["atoms"], edges / row["atoms"]).total_bytes
                )
                if needed > budget:
                    rows.append({**row, "skipped": f"needs ~{needed / 2**30:.0f} GiB"})
                    print_row(rows[-1])
                    continue
                rows.append({**row, **bench_atomfm(size, lmax, atoms, device, repeat)})
                print_row(rows[-1])
                if not args.no_baselines:
                    rows.extend(baseline_rows(size, lmax, cfg, name, atoms, device, repeat))
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "quick": args.quick,
        "rows": rows,
        "baselines": baseline_status(rows),
    }
    out = write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"baselines: {result['baselines']}\nwrote {out}")


INSTALL_HINTS = {
    "mace": "make setup-bench installs mace-torch beside atomfm",
    "equiformer_v2": "fairchem-core 1.10 pins torch 2.4: run it from its own venv (docs/model.md, Benchmark)",
}


def baseline_status(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per baseline: "ran" (some row measured), "failed" (every row skipped) or why it did not import."""
    status = {}
    for name, key, module in (
        ("mace", "mace", "mace.modules"),
        ("equiformer_v2", "eqv2", "fairchem.core.models.equiformer_v2.equiformer_v2"),
    ):
        ran = [row for row in rows if row["model"] == key]
        if ran:
            status[name] = "ran" if any("skipped" not in row for row in ran) else "failed"
            continue
        try:
            if name == "equiformer_v2":
                import_equiformer_v2()
            else:
                with torch.serialization.safe_globals([slice]):
                    importlib.import_module(module)
            status[name] = "importable, not run"
        except ImportError as err:
            status[name] = f"not importable here ({err}); {INSTALL_HINTS[name]}"
    return status


def baseline_rows(
    size: str, lmax: int, cfg: Any, system: str, atoms: list[Atoms], device: torch.device, repeat: int
) -> list[dict[str, Any]]:
    """One row per baseline whose package imports in this interpreter (MACE, EquiformerV2)."""
    b = cfg.backbone
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if importlib.util.find_spec("mace") is not None:
        runs.append(("mace", lambda: bench_mace(b.channels, lmax, b.cutoff, atoms, device, repeat)))
    if importlib.util.find_spec("fairchem") is not None:
        runs.append(
            (
                "eqv2",
                lambda: bench_equiformer_v2(
                    b.channels,
                    lmax,
                    b.cutoff,
                    atoms,
                    device,
                    repeat,
                    mmax=b.mmax,
                    num_layers=b.num_layers,
                    num_heads=b.num_heads,
                    attn_channels=b.attn_channels,
                    ffn_channels=b.ffn_channels,
                ),
            )
        )
    rows = []
    for name, bench in runs:
        row = {
            "model": name,
            "size": size,
            "lmax": lmax,
            "system": system,
            "atoms": sum(len(a) for a in atoms),
        }
        try:
            row.update(bench())
        except (RuntimeError, ValueError, TypeError, KeyError, AssertionError, ImportError) as err:
            row["skipped"] = f"failed: {type(err).__name__}: {err}"
        print_row(row)
        rows.append(row)
    return rows


def available_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory * 0.9
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5


def print_row(row: dict[str, Any]) -> None:
    if not hasattr(print_row, "header"):
        print_row.header = True
        print(
            f"{'model':<8}{'size':<7}{'lmax':>5}{'system':>9}{'atoms':>7}{'params':>12}{'infer':>10}"
            f"{'train direct':>14}{'train cons.':>13}{'memory':>11}   (atoms/s; memory MiB)"
        )
    head = f"{row['model']:<8}{row['size']:<7}{row['lmax']:>5}{row['system']:>9}{row['atoms']:>7}"
    if "skipped" in row:
        print(f"{head}  skipped: {row['skipped']}")
        return
    print(
        f"{head}{row['parameters']:>12,}{row['infer_atoms_per_s']:>10.0f}{row['train_direct_atoms_per_s']:>14.0f}"
        f"{row['train_conservative_atoms_per_s']:>13.0f}{row['memory_bytes'] / 2**20:>11.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
