"""`atomfm finetune --from CHECKPOINT --config FILE`: train from a checkpoint's weights (no optimiser state,
no step counter), with the config's `finetune` options (freezing, layer-wise learning rates, LoRA via
`model.overrides.lora`, re-initialised heads). The same under any launcher:

atomfm finetune --from runs/demo/export --config configs/finetune_conservative_demo.yaml
deepspeed --num_accelerators 2 --module launch.cli finetune --from runs/demo/direct --config FILE key=value
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from train.cli import add_run_arguments, main

    p = sub.add_parser(
        "finetune",
        help="fine-tune from a checkpoint's weights (export, DeepSpeed ZeRO 0-3 or DDP checkpoint, run folder)",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="init_from",
        required=True,
        metavar="CHECKPOINT",
        help="weights to start from (sets model.init_from)",
    )
    add_run_arguments(p)
    p.set_defaults(func=main, command="finetune")
