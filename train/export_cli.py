"""`atomfm export CHECKPOINT --out DIR`: consolidated fp32 safetensors + model config from a training checkpoint.

CHECKPOINT is a checkpoint folder (``<run>/checkpoints/step_*``) or a run folder (its latest checkpoint).
DeepSpeed checkpoints of any ZeRO stage are consolidated (ZeRO-3 shards joined); ``--ema`` exports the
EMA weights instead of the trained ones. The result loads with ``AtomFMCalculator.from_checkpoint(DIR)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's weights as fp32 safetensors + model config",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder, or a run folder (its latest checkpoint)")
    p.add_argument("--out", required=True, help="export folder (model.safetensors + model_config.json)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--best", action="store_true", help="export the run's best checkpoint by validation")
    p.set_defaults(func=main)


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, *, ema: bool = False, best: bool = False
) -> Path:
    """Write the export of ``checkpoint`` (with ``best``: the run's best by validation) into ``out``."""
    from model.checkpoint_io import load_model, save_export
    from model.checkpoint_layout import CheckpointFolder, best_checkpoint, resolve_checkpoint
    from train.checkpoint import load_ema_weights
    from train.logging import METRICS_FILE

    folder = best_checkpoint(checkpoint) if best else resolve_checkpoint(checkpoint)
    model = load_model(folder)
    if ema:
        state = model.state_dict()
        state.update(load_ema_weights(folder))
        model.load_state_dict(state)
    files = CheckpointFolder(folder)
    metrics = folder / METRICS_FILE  # an export's copy, else its run's (<run>/checkpoints/step_*)
    metrics = metrics if metrics.is_file() else folder.parent.parent / METRICS_FILE
    provenance = [files.run_config, files.trainer_state, metrics]
    return save_export(model, out, provenance=provenance)


def main(args: argparse.Namespace) -> int:
    from data_pipeline.schema import BadInputError

    try:
        out = export_checkpoint(args.checkpoint, args.out, ema=args.ema, best=args.best)
    except BadInputError as err:
        print(f"atomfm export: {err}", file=sys.stderr)
        return 2
    print(f"exported {'EMA ' if args.ema else ''}weights of {args.checkpoint} to {out}")
    return 0
