"""`atomfm train`: pretrain from a YAML config, with dotted overrides, under any launcher or none.

atomfm train --config configs/pretrain_demo.yaml optim.lr=3e-4 run.max_steps=500
torchrun --nproc_per_node=2 -m launch.cli train --config configs/pretrain_demo.yaml
deepspeed --num_accelerators 2 --module launch.cli train --config configs/pretrain_demo.yaml
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain the model (DeepSpeed or DDP) from a YAML config",
        description="Pretrain from a YAML config. Any key can be overridden as key.sub=value.",
    )
    add_run_arguments(p)
    p.set_defaults(func=main, command="train")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments `atomfm train` and `atomfm finetune` share."""
    p.add_argument("--config", required=True, help="YAML run config (see configs/pretrain_demo.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of config keys, e.g. optim.lr=3e-4 deepspeed.zero_stage=3",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint of run.out_dir, or from CHECKPOINT "
        "(default: the config's run.resume, 'auto')",
    )
    p.add_argument("--no-wandb", action="store_true", help="do not log to wandb")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    import warnings

    from data_pipeline.schema import BadInputError

    # DeepSpeed 0.19 calls torch.distributed functions that torch 2.13 marks deprecated, on every step.
    warnings.filterwarnings(
        "ignore", message=r".*torch\.distributed\..* is deprecated", category=FutureWarning
    )
    from train.config import load_config

    command = getattr(args, "command", "train")
    overrides = list(args.overrides)
    if getattr(args, "init_from", None):
        overrides.append(f"model.init_from={args.init_from}")
    try:
        cfg = load_config(args.config, overrides)
    except BadInputError as err:
        print(f"atomfm {command}: bad config: {err}", file=sys.stderr)
        return 2
    from train.engine.distributed import init_distributed, shutdown_distributed
    from train.trainer import NonFiniteLossError, train
    from train.watchdog import HUNG_EXIT, PeerLostError

    local_rank = (
        args.local_rank if args.local_rank is not None else getattr(args, "launcher_local_rank", None)
    )
    ctx = init_distributed(cfg.distributed, engine=cfg.engine, local_rank_arg=local_rank)
    try:
        train(cfg, ctx, resume=args.resume, use_wandb=not args.no_wandb)
    except NonFiniteLossError as err:
        print(f"atomfm {command}: stopped: {err}", file=sys.stderr)
        return 3
    except BadInputError as err:
        print(f"atomfm {command}: {err}", file=sys.stderr)
        return 2
    except PeerLostError as err:
        print(f"atomfm {command}: {err}. Stopping this process (exit code {HUNG_EXIT}).", file=sys.stderr)
        return HUNG_EXIT
    finally:
        shutdown_distributed()
    return 0
