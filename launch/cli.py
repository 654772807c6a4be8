"""`atomfm`: one command line for every stage. Each stage package contributes a command group."""

from __future__ import annotations

import argparse
import importlib
import sys

# (command group, module that defines `register(subparsers)`). Every listed module must import: one that
# does not is an error naming the group, never a group that silently vanishes from `atomfm --help`.
COMMAND_GROUPS: tuple[tuple[str, str], ...] = (
    ("data", "data_pipeline.cli"),
    ("model", "model.cli"),
    ("train", "train.cli"),
    ("export", "train.export_cli"),
    ("finetune", "train.finetune_cli"),
    ("eval", "eval.cli"),
    ("leaderboard", "eval.leaderboard.cli"),
    ("generate", "eval.generation.cli"),
    ("plan", "launch.plan_cli"),
    ("launch", "launch.launch_cli"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomfm",
        description="atomfm: build corpora, train and evaluate an SE(3)-equivariant atomistic foundation model.",
    )
    # The deepspeed launcher puts --local_rank=N before the command (`--module launch.cli --local_rank=0 train`).
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        dest="launcher_local_rank",
        type=int,
        default=None,
        help=argparse.SUPPRESS,
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    for name, module in COMMAND_GROUPS:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise ImportError(
                f"atomfm command group {name!r}: its module {module} does not import ({err}); "
                "reinstall atomfm (pip install -e .) or fix that module"
            ) from err
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.group is None else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
