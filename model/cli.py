"""`atomfm model ...`: the named model sizes, their parameters and activation memory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("model", help="inspect model sizes: parameters, shapes, activation memory")
    msub = group.add_subparsers(dest="model_command", metavar="SUBCOMMAND")

    p = msub.add_parser(
        "list", help="the named sizes with their parameter counts (counted on the meta device)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=list_sizes)

    p = msub.add_parser("info", help="parameters, shapes, heads and activation memory of one size")
    p.add_argument("name", help="a size from `atomfm model list`")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model or backbone config field, e.g. --set lmax=4 (repeatable)",
    )
    p.add_argument(
        "--edges-per-atom",
        type=float,
        default=50.0,
        help="neighbours per atom assumed by the estimate (6 Å: ~20 small molecules, ~45 silicon, "
        "~100 protein interior)",
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="also measure saved activations on a 64-atom silicon cell (builds the model on CPU: small sizes), "
        "itemised by module, op and shape",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=12,
        help="with --measure: the largest saved-tensor groups to list per training",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=info)

    group.set_defaults(func=lambda args: group.print_help() or 0)


def list_sizes(args: argparse.Namespace) -> int:
    from model.atomfm import model_config
    from model.sizes import SIZES

    rows = [_summary(name, model_config(name)) for name in SIZES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<8}{'parameters':>14}{'layers':>8}{'lmax':>6}{'mmax':>6}{'channels':>10}")
    for r in rows:
        print(
            f"{r['name']:<8}{r['parameters']:>14,}{r['num_layers']:>8}{r['lmax']:>6}{r['mmax']:>6}{r['channels']:>10}"
        )
    return 0


def info(args: argparse.Namespace) -> int:
    from data_pipeline.schema import BadInputError
    from model.activation_memory import estimate_activation_memory
    from model.atomfm import model_config

    try:
        cfg = model_config(args.name, **_parse_overrides(args.overrides))
    except (BadInputError, ValueError) as err:  # a size's own checks raise ValueError too
        print(f"atomfm model info: {err}", file=sys.stderr)
        return 2
    report = _summary(args.name, cfg)
    bb = cfg.backbone
    report.update(
        attn_channels=bb.attn_channels,
        ffn_channels=bb.ffn_channels,
        num_heads=bb.num_heads,
        cutoff=bb.cutoff,
        activation=bb.activation,
        activation_checkpointing=bb.activation_checkpointing,
        long_range=(
            f"{cfg.long_range_method}, smearing {cfg.long_range_smearing} Å, damping "
            f"{cfg.long_range_damping} Å"
        )
        if cfg.long_range
        else "off",
    )
    fp32 = estimate_activation_memory(bb, 1000, args.edges_per_atom, 4)
    bf16 = estimate_activation_memory(bb, 1000, args.edges_per_atom, 2)
    report["activation_memory_per_1000_atoms"] = {
        "edges_per_atom": args.edges_per_atom,
        "fp32_bytes": fp32.total_bytes,
        "bf16_bytes": bf16.total_bytes,
        "fp32_checkpointed_bytes": fp32.checkpointed_bytes,
        "bf16_checkpointed_bytes": bf16.checkpointed_bytes,
        "how": "analytic count of the tensors autograd keeps per layer, per edge and per atom, for an energy "
        "and direct-force loss (model/activation_memory.py); conservative-force training measures ~2.5x that; "
        "activation checkpointing keeps each layer's input and one layer at a time (the checkpointed figures), "
        "for conservative forces too (model/checkpointing.py); `atomfm plan` turns these into a ZeRO stage "
        "and max_atoms",
    }
    if args.measure:
        report["measured_per_1000_atoms"], report["saved_tensors_per_1000_atoms"] = _measure(cfg, args.rows)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key == "saved_tensors_per_1000_atoms":
            _print_saved_tensors(value)
            continue
        if isinstance(value, dict):
            print(key)
            for k, v in value.items():
                print(f"  {k:<32}{_format_bytes(v) if k.endswith('_bytes') else v}")
            continue
        if key == "heads":
            value = ", ".join(value)
        elif key.endswith("parameters"):
            value = f"{value:,}"
        print(f"{key:<34}{value}")
    return 0


def _summary(name: str, cfg: Any) -> dict[str, Any]:
    import torch

    from model.atomfm import AtomFM

    with torch.device("meta"):
        model = AtomFM(cfg)
    bb = cfg.backbone
    return {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "backbone_parameters": sum(p.numel() for p in model.backbone.parameters()),
        "head_parameters": sum(p.numel() for p in model.heads.parameters()),
        "num_layers": bb.num_layers,
        "lmax": bb.lmax,
        "mmax": bb.mmax,
        "channels": bb.channels,
        "heads": list(cfg.heads),
    }


def _measure(cfg: Any, rows: int) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Saved activations of energy + direct forces and of conservative forces on a 64-atom silicon cell:
    totals, and the ``rows`` largest groups of saved tensors (``account_saved_tensors``) of each."""
    from ase.build import bulk
    from torch_geometric.data import Batch

    from data_pipeline.graph import structure_to_graph
    from data_pipeline.schema import Structure, validate
    from model.activation_memory import (
        account_saved_tensors,
        estimate_activation_memory,
        summarise_saved_tensors,
    )
    from model.atomfm import AtomFM

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    structure = validate(
        Structure(
            key="si64",
            domain="material",
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array,
            pbc=atoms.pbc,
        )
    )
    batch = Batch.from_data_list([structure_to_graph(structure, cfg.backbone.cutoff)])
    model = AtomFM(cfg).train()
    num_atoms, num_edges = len(atoms), batch.edge_index.shape[1]
    per_1000 = 1000 / num_atoms
    runs = {
        "direct_forces": lambda: model(batch, ("energy", "forces_direct")),
        "conservative_forces": lambda: model(batch, ("energy", "forces"), conservative=True),
    }
    saved = {name: account_saved_tensors(model, run, {"E": num_edges}) for name, run in runs.items()}
    estimate = estimate_activation_memory(cfg.backbone, 1000, num_edges / num_atoms, 4).total_bytes
    totals = {
        "structure": f"Si {num_atoms} atoms, {num_edges / num_atoms:.0f} edges/atom (E: edges), fp32",
        **{f"{name}_bytes": s.total_bytes * per_1000 for name, s in saved.items()},
        "estimate_same_edges_bytes": estimate,
    }
    return totals, {name: summarise_saved_tensors(s.tensors, per_1000)[:rows] for name, s in saved.items()}


def _print_saved_tensors(groups: dict[str, list[dict[str, Any]]]) -> None:
    """The largest saved-tensor groups, per 1,000 atoms, for each training."""
    for name, rows in groups.items():
        print(f"largest saved tensors, {name.replace('_', ' ')} (per 1,000 atoms; layers as *)")
        for r in rows:
            module = r["module"].removeprefix("backbone.")
            print(
                f"  {_format_bytes(r['bytes']):>10}  {r['count']:>3}x {r['phase']:<9}"
                f"{module:<34}{r['op']:<22}{r['shape']} {r['dtype']}"
            )


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set`` items as model_config keywords (``lora.rank=4`` → ``{"lora": {"rank": 4}}``)."""
    from data_pipeline.config_mapping import parse_override

    out: dict[str, Any] = {}
    for item in items:
        parts, value = parse_override(item, where="--set")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
