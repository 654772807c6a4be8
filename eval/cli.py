"""`atomfm eval`: score a checkpoint, an ASE calculator or the baseline on a corpus split or labelled files.

atomfm eval --checkpoint runs/pretrain_demo/export --data data/demo --tasks accuracy --baseline --out results
atomfm eval --calculator ase.calculators.emt:EMT --data data/demo --tasks accuracy --out results
atomfm eval --checkpoint runs/x/export --data mols.extxyz --level-of-theory gfn2-xtb --out results
atomfm leaderboard results --out report   # then gather the result files
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a checkpoint, an ASE calculator or the baseline; one JSON per (model, task, data)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = p.add_argument_group("what to evaluate (one or more)")
    who.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="CKPT",
        help="export, checkpoint or run folder (repeatable)",
    )
    who.add_argument(
        "--calculator",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="any ASE calculator, e.g. ase.calculators.emt:EMT (repeatable)",
    )
    who.add_argument(
        "--calculator-options", default="{}", metavar="JSON", help="keyword arguments of the factory"
    )
    who.add_argument(
        "--baseline",
        action="store_true",
        help="also score per-element reference energies with zero forces (fitted on the corpus's "
        "train split, or on the data itself for files)",
    )
    who.add_argument(
        "--ridge-baseline",
        action="store_true",
        help="also score the same baseline with a ridge fit, chosen per level of theory on the corpus's val "
        "split as training's model.reference_ridge: auto does (name reference-ridge+zero-force)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="CORPUS_OR_FILE",
        help="corpus folders (their --split) or labelled files any reader reads",
    )
    p.add_argument("--tasks", default="accuracy", help="comma-separated task names (docs/eval.md lists them)")
    p.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="TASK.OPTION=VALUE",
        help="a task's option, e.g. eos.max_structures=10 (repeatable; docs/eval.md lists them)",
    )
    p.add_argument(
        "--split", default="test", help="corpus split to evaluate (default: test, never trained on)"
    )
    p.add_argument("--level-of-theory", default=None, help="level the labels of the files were computed at")
    p.add_argument(
        "--domain", default=None, help="domain of file records (default: inferred from the format)"
    )
    p.add_argument(
        "--forces",
        choices=["auto", "conservative", "direct"],
        default="auto",
        help="checkpoint forces: what it was trained on (auto), −∂E/∂x, or the direct head",
    )
    p.add_argument("--max-structures", type=int, default=None, help="a seeded random subset of the data")
    p.add_argument("--name", action="append", default=[], help="model names, in the order given")
    p.add_argument(
        "--data-name", default=None, help="name of the data in the results (default: from its paths)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the result files")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    return report_written("eval", run, args)


def report_written(
    command: str, run: Callable[[argparse.Namespace], list[Path]], args: argparse.Namespace
) -> int:
    """Run a command that writes result files: print each path it wrote (exit 0), or its bad-input error
    naming the command (exit 2)."""
    from data_pipeline.schema import BadInputError

    try:
        written = run(args)
    except BadInputError as err:
        print(f"atomfm {command}: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> list:
    from data_pipeline.corpus_reader import read_split
    from data_pipeline.schema import BadInputError
    from eval.data import load_eval_data
    from eval.predictors import CalculatorPredictor, CheckpointPredictor, ReferenceBaseline
    from eval.runner import evaluate
    from eval.tasks import build_task, parse_task_options

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    task_options = parse_task_options(args.task_option, tasks)
    for name in tasks:
        build_task(name, task_options.get(name))  # unknown names and options fail before any data is read
    if not (args.checkpoint or args.calculator or args.baseline or args.ridge_baseline):
        raise BadInputError(
            "nothing to evaluate: give --checkpoint, --calculator or --baseline", field="checkpoint"
        )
    try:
        options = json.loads(args.calculator_options)
    except ValueError as err:
        raise BadInputError(f"not JSON ({err})", field="calculator-options") from None
    data = load_eval_data(
        args.data,
        split=args.split,
        level_of_theory=args.level_of_theory,
        domain=args.domain,
        max_structures=args.max_structures,
        seed=args.seed,
        name=args.data_name,
    )
    names = iter(args.name)
    forces = None if args.forces == "auto" else args.forces
    predictors = [CheckpointPredictor(c, name=next(names, None), forces=forces) for c in args.checkpoint]
    predictors += [CalculatorPredictor(c, name=next(names, None), options=options) for c in args.calculator]
    fitted_on = ",".join(f"{c}/train" for c in data.train_corpora) or data.name
    if args.baseline:
        training = read_split(data.train_corpora, "train") if data.train_corpora else data.structures
        predictors.append(ReferenceBaseline(training, fitted_on=fitted_on))
    if args.ridge_baseline:
        if not data.train_corpora:
            raise BadInputError(
                "--ridge-baseline chooses its ridge on a corpus's val split: give corpus folders to --data",
                field="ridge-baseline",
            )
        predictors.append(
            ReferenceBaseline(
                read_split(data.train_corpora, "train"),
                fitted_on=fitted_on,
                name="reference-ridge+zero-force",
                held_out=read_split(data.train_corpora, "val"),
            )
        )
    written = []
    for predictor in predictors:
        written += evaluate(
            predictor,
            data,
            tasks,
            args.out,
            seed=args.seed,
            progress=not args.no_progress,
            options=task_options,
        )
    return written
