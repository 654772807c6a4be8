"""Learning curves of fine-tuning: pretrained versus from scratch, over the size of the labelled set.

For each size N (e.g. 50, 200, 1000 and all), a seeded subset of N training structures of a corpus is made
with ``atomfm data subset`` (whole groups, nested: the 50 are among the 200), and the same fine-tuning config
is run twice at the same moment (two processes, one thread each, so machine noise hits both): once from a
pretrained checkpoint (``atomfm finetune --from``) and once from scratch (``atomfm train`` with
``model.init_from=null``), for the same steps, batches and seed. Both exports are scored by ``atomfm eval``'s
accuracy task on the full corpus's test split, which no subset contains; the leaderboard built from those
result files has the "pretrained versus from scratch" section with the curve (``<out>/report``). Prints a
table and writes JSON (``<out>/curve.json``).

The demo's new-level curve (GFN1-xTB labels, which the demo checkpoint never saw; about 25 minutes here):

    atomfm data relabel data/demo --label xtb-gfn1 --domain molecule --out data/demo_gfn1_all
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune_curve.py --pretrained runs/demo/export \\
        --corpus data/demo_gfn1_all --domain molecule --sizes 50 200 1000 all --steps 100 \\
        --config configs/finetune_new_level_demo.yaml --out results/finetune_curve/gfn1

Equal steps at every size: the small sets are seen for many epochs, the large ones for about one, so the
curve answers "what does pretraining buy at this fine-tuning budget", not "at convergence".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from processes import launch, wait_all  # noqa: E402

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402

ARMS = ("pretrained", "scratch")


def atomfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", *args]


def run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=_env())
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")


def run_together(commands: dict[str, tuple[list[str], Path]]) -> dict[str, float]:
    """Start every command at once; wait for all; the seconds each took. A failure stops the others and
    names its log."""
    env = {"WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    return wait_all({name: (launch(command, log, env), log) for name, (command, log) in commands.items()})


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"))


def subset(args: argparse.Namespace, size: str, out: Path) -> Path:
    folder = out / "data" / f"n{size}"
    if not (folder / "manifest.json").is_file():
        command = atomfm("data", "subset", str(args.corpus), "--split", "train", "--out", str(folder))
        command += ["--domain", args.domain, "--seed", str(args.seed)]
        if size != "all":
            command += ["--structures", size]
        run(command, out / "logs" / f"subset-n{size}.log")
    return folder


def arm_commands(args: argparse.Namespace, size: str, corpus: Path, out: Path) -> dict[str, tuple[list[str], Path]]:
    common = [
        f"data.corpus=[{corpus}]",
        f"run.max_steps={args.steps}",
        f"run.checkpoint_every={args.steps}",
        "validation.every=0",  # a subset has no val split; both arms export their last step
        "data.num_workers=0",
        "logging.wandb=false",
        f"run.seed={args.seed}",
        f"data.seed={args.seed}",
        *args.override,
    ]
    runs = {arm: out / "runs" / f"{arm}-n{size}" for arm in ARMS}
    return {
        "pretrained": (
            atomfm("finetune", "--from", str(args.pretrained), "--config", str(args.config), *common,
                   f"run.out_dir={runs['pretrained']}", "run.resume=never"),
            out / "logs" / f"pretrained-n{size}.log",
        ),
        "scratch": (
            atomfm("train", "--config", str(args.config), *common, "model.init_from=null",
                   f"run.out_dir={runs['scratch']}", "run.resume=never"),
            out / "logs" / f"scratch-n{size}.log",
        ),
    }


def score(args: argparse.Namespace, size: str, out: Path) -> None:
    command = atomfm("eval")
    for arm in ARMS:
        run_dir = out / "runs" / f"{arm}-n{size}"
        run(atomfm("export", str(run_dir), "--out", str(run_dir / "export")), out / "logs" / f"export-{arm}-n{size}.log")
        command += ["--checkpoint", str(run_dir / "export"), "--name", f"{arm}-n{size}"]
    command += ["--data", str(args.corpus), "--tasks", "accuracy", "--out", str(out / "eval"), "--no-progress"]
    run(command, out / "logs" / f"eval-n{size}.log")


def baseline(args: argparse.Namespace, out: Path) -> None:
    command = atomfm("eval", "--baseline", "--data", str(args.corpus), "--tasks", "accuracy")
    run(command + ["--out", str(out / "eval"), "--no-progress"], out / "logs" / "eval-baseline.log")


def read_points(out: Path, domain: str) -> list[dict[str, Any]]:
    points = []
    for path in sorted((out / "eval").glob("*__accuracy__*.json")):
        record = json.loads(path.read_text())
        training = record["model"].get("training") or {}
        metrics = record["metrics"].get(domain, {})
        points.append(
            {
                "model": record["model"]["name"],
                "arm": record["model"]["kind"] if record["model"]["kind"] == "baseline" else
                ("scratch" if training.get("init_from") is None else "pretrained"),
                "train_structures": training.get("train_structures"),
                "steps": training.get("step"),
                **{name: metrics.get(name) for name in ("force_mae", "energy_mae", "force_cos")},
            }
        )
    return sorted(points, key=lambda p: (p["train_structures"] or 0, p["arm"]))


def print_table(points: list[dict[str, Any]], domain: str) -> None:
    def shown(metric: dict[str, Any] | None) -> str:
        if not metric or metric["value"] is None:
            return "—"
        low, high = metric["ci95"]
        return f"{metric['value']:.1f} [{low:.1f}, {high:.1f}]"

    print(f"\n{domain}: test split of the full corpus (meV/Å, meV/atom)")
    print(f"{'model':<18} {'structures':>10} {'steps':>6}  {'force MAE [95%]':<24} {'energy MAE [95%]':<24}")
    for p in points:
        n = "—" if p["train_structures"] is None else str(p["train_structures"])
        steps = "—" if p["steps"] is None else str(p["steps"])
        print(f"{p['model']:<18} {n:>10} {steps:>6}  {shown(p['force_mae']):<24} {shown(p['energy_mae']):<24}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", type=Path, required=True, help="checkpoint or export to fine-tune from")
    parser.add_argument("--corpus", type=Path, required=True, help="labelled corpus: subsets of its train split")
    parser.add_argument("--domain", choices=["molecule", "protein", "material"], required=True)
    parser.add_argument("--config", type=Path, required=True, help="the fine-tuning config both arms run")
    parser.add_argument("--sizes", nargs="+", default=["50", "200", "1000", "all"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", nargs="*", default=[], help="more key=value overrides for both arms")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "finetune_curve")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    timings = {}
    for size in args.sizes:
        corpus = subset(args, size, args.out)
        try:
            took = run_together(arm_commands(args, size, corpus, args.out))
        except RuntimeError as err:
            sys.exit(str(err))
        score(args, size, args.out)
        timings[size] = took
        print(f"n={size}: trained in {took['pretrained']:.0f} s (pretrained) and {took['scratch']:.0f} s (scratch)")
    baseline(args, args.out)
    run(atomfm("leaderboard", str(args.out / "eval"), "--out", str(args.out / "report")), args.out / "logs" / "leaderboard.log")
    points = read_points(args.out, args.domain)
    print_table(points, args.domain)
    record = {
        "benchmark": "finetune_curve",
        "pretrained": str(args.pretrained),
        "corpus": str(args.corpus),
        "domain": args.domain,
        "config": str(args.config),
        "steps": args.steps,
        "seed": args.seed,
        "overrides": args.override,
        "wall_s": timings,
        "points": points,
        "report": str(args.out / "report" / "index.html"),
    }
    write_text_atomic(args.out / "curve.json", json.dumps(record, indent=1))
    print(f"\nwrote {args.out / 'curve.json'} and {args.out / 'report' / 'index.html'}")


if __name__ == "__main__":
    main()
