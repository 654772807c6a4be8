"""`atomfm plan`: per-GPU memory of a model size under ZeRO 0–3, and the stage, checkpointing and max_atoms to use.

atomfm plan --model xl --gpus 8 --gpu-memory 80GB
atomfm plan --model large --gpus 4 --nodes 2 --gpu-memory 40GB --max-atoms 2000 --conservative --json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launch.memory_plan import Plan


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate per-GPU memory under ZeRO 0-3 and recommend the stage, checkpointing and max_atoms",
        description="Per-GPU memory for weights, gradients and optimiser state under ZeRO 0-3 (DeepSpeed's "
        "estimators beside atomfm's own count) plus activations per 1,000 atoms, with and without activation "
        "checkpointing; recommends deepspeed.zero_stage, model.activation_checkpointing and data.max_atoms.",
    )
    p.add_argument("--model", required=True, metavar="NAME", help="a size from `atomfm model list`")
    p.add_argument("--gpus", required=True, type=positive_int, metavar="N", help="GPUs per node")
    p.add_argument("--nodes", type=positive_int, default=1, metavar="K", help="nodes (default 1)")
    p.add_argument(
        "--gpu-memory", required=True, type=memory_size, metavar="SIZE", help="memory of one GPU, e.g. 80GB"
    )
    p.add_argument(
        "--max-atoms",
        type=positive_int,
        default=None,
        metavar="A",
        help="atoms per GPU the plan must hold, at least your largest structure (default 1,000)",
    )
    p.add_argument("--conservative", action="store_true", help="training on conservative forces (-dE/dx)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="default bf16 (GPUs)")
    p.add_argument(
        "--edges-per-atom",
        type=float,
        default=50.0,
        help="neighbours per atom (6 Å: ~20 small molecules, ~45 silicon, ~100 protein interior)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=main)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def memory_size(text: str) -> int:
    from launch.memory_plan import parse_memory

    try:
        return parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(args: argparse.Namespace) -> int:
    from launch.memory_plan import measure_model, plan_memory
    from model.sizes import SIZES

    if args.model not in SIZES:
        print(
            f"atomfm plan: --model: unknown size {args.model!r}; expected one of {', '.join(SIZES)}",
            file=sys.stderr,
        )
        return 2
    model = measure_model(args.model, precision=args.precision, edges_per_atom=args.edges_per_atom)
    plan = plan_memory(
        model,
        gpus_per_node=args.gpus,
        nodes=args.nodes,
        gpu_memory_bytes=args.gpu_memory,
        precision=args.precision,
        conservative=args.conservative,
        edges_per_atom=args.edges_per_atom,
        target_atoms=args.max_atoms,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print_plan(plan)
    if plan.recommended.max_atoms == 0:
        print(
            f"atomfm plan: {args.model} does not fit: its model states leave no room for activations on "
            f"{args.gpus * args.nodes} GPU(s) of {args.gpu_memory / 2**30:.0f} GiB; use more GPUs or larger ones",
            file=sys.stderr,
        )
        return 1
    return 0


def print_plan(plan: Plan) -> None:
    from launch.memory_plan import RESERVED_FRACTION

    m = plan.model
    gpus = plan.gpus_per_node * plan.nodes
    print(
        f"{m.name}: {m.parameters:,} parameters (largest layer {m.largest_layer_parameters:,}); "
        f"{plan.nodes} node(s) x {plan.gpus_per_node} GPU(s) = {gpus}, {gib(plan.gpu_memory_bytes)} each, "
        f"{gib(plan.usable_bytes)} usable ({RESERVED_FRACTION:.0%} reserved)"
    )
    print("\nmodel states per GPU (GiB; fp32 weights, AdamW; DeepSpeed's estimator counts 16-bit weights)")
    print(
        f"{'ZeRO':<6}{'weights':>10}{'gradients':>11}{'optimiser':>11}{'gathered':>10}{'total':>9}{'DeepSpeed':>11}"
    )
    for s in plan.stages:
        ds = "-" if s.deepspeed_estimate is None else f"{s.deepspeed_estimate / 2**30:.2f}"
        print(
            f"{s.stage:<6}{s.weights / 2**30:>10.2f}{s.gradients / 2**30:>11.2f}{s.optimiser / 2**30:>11.2f}"
            f"{s.gathered / 2**30:>10.2f}{s.total / 2**30:>9.2f}{ds:>11}"
        )
    kind = "conservative forces" if plan.conservative else "direct forces"
    print(
        f"\nactivations per 1,000 atoms ({plan.precision}, {plan.edges_per_atom:g} edges/atom, {kind}): "
        f"{gib(plan.options[0].activation_bytes_per_1000_atoms)} without checkpointing, "
        f"{gib(plan.options[1].activation_bytes_per_1000_atoms)} with"
    )
    print(f"\n{'ZeRO':<6}{'checkpointing':<15}{'max atoms per GPU':>18}")
    for o in plan.options:
        print(f"{o.zero_stage:<6}{'on' if o.activation_checkpointing else 'off':<15}{o.max_atoms:>18,}")
    r = plan.recommended
    verdict = "holds" if plan.fits_target else "does not hold"
    print(
        f"\nrecommended: ZeRO-{r.zero_stage}, activation checkpointing {'on' if r.activation_checkpointing else 'off'}, "
        f"up to {r.max_atoms:,} atoms per GPU ({verdict} the target of {plan.target_atoms:,})"
    )
    if r.max_atoms > 0:
        print("  atomfm train --config FILE " + " ".join(plan.overrides()))
    for note in plan.notes:
        print(f"note: {note}")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
