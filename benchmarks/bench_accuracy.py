"""A race against the field's reference: atomfm and MACE trained on the same training split for the same
wall-clock budget, at the same moment on the same machine (two processes, one thread each, so machine noise
hits both), then scored by the same evaluation code (``eval``'s accuracy task) on the test split, beside the
per-element linear-reference + zero-force baseline.

The 20-minute races (about 25 minutes each on a free 2-core machine; the molecule race first builds the
large-molecule set if it is missing, ~1 minute):

    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --domain molecule --budget-s 1200
    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --domain molecule --budget-s 1200 --mace-equal-params
    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --domain alloys --budget-s 1200
    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --domain crystals --budget-s 1200

A pipeline check: ``--budget-s 120`` (3–7 minutes, scoring included). Domains are sources of the corpus:
``molecule`` = ``molecules`` (GFN2-xTB), ``alloys`` (EMT), ``crystals`` (CHGNet); each is copied once into its
own corpus folder (``data/bench_accuracy/<domain>``, same records, same group-hashed splits) that both models
train on.

atomfm: ``atomfm train --config <--atomfm-config>`` with the domain's corpus, ``run.max_time_s`` = the
budget, one process without loader workers (``data.num_workers=0``); scored with the EMA weights when the
recipe keeps an EMA, on the forces it trained (−∂E/∂x in the default recipe). MACE: ``mace_race.py`` (MACE's
default recipe; ``32x0e + 32x1o`` by default, two interactions, correlation 3, r_max = atomfm's cutoff,
batches of atomfm's ``data.max_atoms``); ``--mace-equal-params`` picks the channels whose MACE has as many
parameters as atomfm's energy (the parameters its energy and forces depend on; heads the recipe does not
train are left out). MACE is scored through its own ASE calculator (``mace.calculators.MACECalculator``).
``--large-molecules`` (molecule domain) adds a test set of 30–80-atom drug-like molecules the corpus does not
contain (``make_large_molecules.py``). Every score is an ``atomfm-eval-result`` file in ``<run>/eval``; the
table and the JSON (``--out``) are read back from those files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mace_race import MaceSettings, build_mace, channels_for_parameters, count_parameters  # noqa: E402
from processes import launch, wait_all  # noqa: E402

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402
from data_pipeline.corpus_reader import read_split  # noqa: E402
from data_pipeline.graph import structure_to_graph  # noqa: E402
from data_pipeline.ingest import IngestOptions, ingest_structures  # noqa: E402
from data_pipeline.manifest import read_manifest  # noqa: E402
from data_pipeline.schema import BadInputError, Structure  # noqa: E402
from data_pipeline.splits import SPLITS  # noqa: E402
from eval.data import EvalData, load_eval_data  # noqa: E402
from eval.predictors import CalculatorPredictor, CheckpointPredictor, ReferenceBaseline  # noqa: E402
from eval.runner import evaluate  # noqa: E402
from model.atomfm import AtomFM  # noqa: E402
from train.config import TrainConfig, load_config  # noqa: E402
from train.export_cli import export_checkpoint  # noqa: E402
from train.logging import METRICS_FILE, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LARGE_MOLECULES = "data/large_molecules/minidrugbank-gfn2.extxyz"


@dataclass(frozen=True)
class Domain:
    """A race domain: the corpus source both models train on, and its records' domain."""

    source: str
    domain: str


DOMAINS = {
    "molecule": Domain("molecules", "molecule"),
    "alloys": Domain("alloys", "material"),
    "crystals": Domain("crystals", "material"),
}


def domain_corpus(corpus: str, source: str, out: Path) -> Path:
    """``out``: a corpus holding ``source``'s records of ``corpus`` with the splits they have there (the same
    split seed and fractions, so the group hash gives the same assignment; checked)."""
    manifest = read_manifest(corpus)
    record = manifest.sources.get(source)
    if record is None:
        raise BadInputError(f"no source {source!r} (it has {', '.join(manifest.sources)})", path=corpus)
    shards = manifest.select(source=source)
    options = IngestOptions(
        source=source,
        label="none",
        shard_size=record["options"]["shard_size"],
        seed=record["options"]["seed"],
        split_fractions=record["options"]["split_fractions"],
        inputs={
            "corpus": str(Path(corpus).resolve()),
            "source": source,
            "shards": [s.sha256 for s in shards],
        },
        progress=False,
    )
    structures = (s for split in SPLITS for s in read_split([corpus], split, source=source))
    ingest_structures(structures, out, options)
    copied = read_manifest(out)
    for split in SPLITS:
        want = sum(s.num_samples for s in shards if s.split == split)
        got = sum(s.num_samples for s in copied.select(split=split))
        if want != got:
            raise BadInputError(f"split {split}: {got} records, the source corpus has {want}", path=str(out))
    return out


def atomfm_overrides(corpus: Path, domain: str, run_dir: Path, budget_s: float) -> list[str]:
    """What the bench sets in every recipe: the domain's corpus alone, the budget, a fresh single-process run."""
    return [
        f"data.corpus=[{corpus}]",
        f"data.domain_weights={{{domain}: 1.0}}",
        "data.num_workers=0",
        f"run.out_dir={run_dir}",
        f"run.max_time_s={budget_s}",
        "run.resume=never",
        "run.progress_bar=false",
        "logging.wandb=false",
    ]


def energy_parameters(model: AtomFM, s: Structure) -> int:
    """Parameters the energy of ``s`` depends on (so its forces too): those a backward of it reaches."""
    model.zero_grad(set_to_none=True)
    batch = Batch.from_data_list([structure_to_graph(s, model.config.backbone.cutoff)])
    model(batch, outputs=("energy",))["energy"].sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def final_record(log: Path) -> dict[str, Any]:
    """The JSON line a training process prints last (``{"finished": ...}``)."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith('{"finished"'):
            return json.loads(line)
    raise RuntimeError(f"no final record in {log}")


def atomfm_curve(run_dir: Path) -> list[dict[str, float]]:
    """Loss against training-loop time (the sum of the logged windows) from the run's metrics.jsonl."""
    curve, elapsed, seen = [], 0.0, 0.0
    if not (run_dir / METRICS_FILE).is_file():  # a run shorter than one logging window
        return curve
    for record in read_metrics(run_dir):
        if "window_s" not in record:
            continue
        elapsed += record["window_s"]
        seen += record["structures_per_s"] * record["window_s"]
        point = {"step": record["step"], "time_s": round(elapsed, 2), "loss": record["loss"]}
        point.update({k: v for k, v in record.items() if k.startswith("loss/") and k.count("/") == 1})
        curve.append({**point, "structures_seen": round(seen)})
    return curve


def race(args: argparse.Namespace, mace: MaceSettings, corpus: Path, run_dir: Path) -> dict[str, Any]:
    """Train both at once for ``args.budget_s``; return their training records."""
    spec = DOMAINS[args.domain]
    elements = ",".join(map(str, sorted(args.eval_elements)))
    processes = {
        "atomfm": (
            launch(
                [sys.executable, "-m", "launch.cli", "train", "--config", args.atomfm_config, "--no-wandb"]
                + atomfm_overrides(corpus, spec.domain, run_dir / "atomfm", args.budget_s)
                + args.atomfm_set,
                run_dir / "atomfm.log",
            ),
            run_dir / "atomfm.log",
        ),
        "mace": (
            launch(
                [sys.executable, str(ROOT / "benchmarks" / "mace_race.py"), "--corpus", str(corpus)]
                + ["--budget-s", str(args.budget_s), "--out", str(run_dir / "mace")]
                + ["--channels", str(mace.channels), "--r-max", str(mace.r_max)]
                + ["--max-atoms", str(mace.max_atoms), "--dtype", mace.dtype, "--elements", elements],
                run_dir / "mace.log",
            ),
            run_dir / "mace.log",
        ),
    }
    start = time.monotonic()
    print(f"training atomfm and MACE for {args.budget_s:.0f} s each (logs in {run_dir})", flush=True)
    wait_all(processes)
    print(f"both finished after {time.monotonic() - start:.0f} s", flush=True)
    return training_records(run_dir)


def training_records(run_dir: Path) -> dict[str, Any]:
    """What each model's finished run says of itself (steps, structures, curve)."""
    atomfm = final_record(run_dir / "atomfm.log")
    mace_record = json.loads((run_dir / "mace" / "result.json").read_text())
    return {
        "atomfm": {
            "steps": atomfm["step"],
            "structures_seen": atomfm["structures_seen"],
            "atoms_seen": atomfm["atoms_seen"],
            "stopped_by": atomfm["finished"],
            "curve": atomfm_curve(run_dir / "atomfm"),
        },
        "mace": {k: mace_record[k] for k in mace_record if k not in ("model_path",)},
    }


def score(
    cfg: TrainConfig, mace: MaceSettings, run_dir: Path, sets: list[EvalData], training: list[Structure]
) -> list[Path]:
    """Result files of atomfm (its EMA weights when the recipe keeps an EMA), MACE and the baseline (fitted on
    ``training``) on every evaluation set."""
    export = export_checkpoint(run_dir / "atomfm", run_dir / "atomfm-export", ema=cfg.optim.ema_decay > 0)
    predictors = [
        CheckpointPredictor(export, name="atomfm"),
        CalculatorPredictor(
            "mace.calculators:MACECalculator",
            name=f"mace-{mace.channels}ch",
            options={
                "model_paths": str(run_dir / "mace" / "model.pt"),
                "device": "cpu",
                "default_dtype": mace.dtype,
            },
        ),
        ReferenceBaseline(training, fitted_on=f"{sets[0].paths[0]}/train"),
    ]
    written = []
    for predictor in predictors:
        for data in sets:
            written += evaluate(predictor, data, ["accuracy"], run_dir / "eval", progress=False)
    return written


def metric_row(result: dict[str, Any]) -> dict[str, Any]:
    metrics = result["metrics"]["all"]
    row = {"model": result["model"]["name"], "data": result["data"]["name"]}
    for name in ("energy_mae", "force_mae", "energy_rmse", "force_rmse"):
        if name in metrics:
            row[name] = {k: metrics[name][k] for k in ("value", "ci95", "n", "n_items", "unit")}
    return row


def _interval(metric: dict[str, Any] | None) -> str:
    return (
        "—" if metric is None else f"{metric['value']:.1f} [{metric['ci95'][0]:.1f}, {metric['ci95'][1]:.1f}]"
    )


def _count(info: dict[str, Any], name: str) -> str:
    return f"{info[name]:,}" if name in info else "—"


def print_table(rows: list[dict[str, Any]], models: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'data':<18} {'model':<22} {'params':>9} {'steps':>6} {'seen':>7} {'E MAE meV/atom [95% CI]':>26} "
        f"{'F MAE meV/Å [95% CI]':>24} {'n':>4}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        info = models.get(row["model"], {})
        n = row.get("energy_mae", row.get("force_mae", {})).get("n", 0)
        print(
            f"{row['data']:<18} {row['model']:<22} {_count(info, 'parameters'):>9} {_count(info, 'steps'):>6} "
            f"{_count(info, 'structures_seen'):>7} {_interval(row.get('energy_mae')):>26} "
            f"{_interval(row.get('force_mae')):>24} {n:>4}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=1200.0, help="wall-clock seconds per model")
    parser.add_argument("--domain", choices=list(DOMAINS), default="molecule")
    parser.add_argument("--corpus", default="data/demo")
    parser.add_argument("--atomfm-config", default="configs/bench_accuracy.yaml", help="atomfm's recipe")
    parser.add_argument(
        "--atomfm-set", nargs="*", default=[], metavar="KEY=VALUE", help="further overrides of the recipe"
    )
    parser.add_argument("--mace-channels", type=int, default=32, help="MACE hidden irreps Cx0e + Cx1o")
    parser.add_argument("--score-only", action="store_true", help="score the models of a finished race again")
    parser.add_argument(
        "--mace-equal-params", action="store_true", help="MACE channels chosen to match atomfm's parameters"
    )
    parser.add_argument("--mace-dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--large-molecules",
        default=None,
        help=f"extra test set (molecule domain; default {DEFAULT_LARGE_MOLECULES}, built when missing); "
        "'none' to skip",
    )
    parser.add_argument("--work", default="runs/bench_accuracy", help="run folders (replaced on every race)")
    parser.add_argument(
        "--out", default=None, help="JSON (default results/bench_accuracy/<domain>[-equal-params].json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = DOMAINS[args.domain]
    tag = args.domain + ("-equal-params" if args.mace_equal_params else "")
    out = Path(args.out or f"results/bench_accuracy/{tag}.json")
    run_dir = Path(args.work) / tag
    cfg = load_config(args.atomfm_config, args.atomfm_set)
    corpus = domain_corpus(args.corpus, spec.source, Path("data/bench_accuracy") / args.domain)

    sets = [load_eval_data([str(corpus)], split="test", name=f"{args.domain}/test")]
    large = args.large_molecules or (DEFAULT_LARGE_MOLECULES if args.domain == "molecule" else "none")
    if large != "none":
        if not Path(large).is_file():
            from make_large_molecules import build_large_molecules

            build_large_molecules(large, corpus=args.corpus)
        sets.append(load_eval_data([large], level_of_theory="gfn2-xtb", name="large-molecules"))

    training = list(read_split([str(corpus)], "train"))
    args.eval_elements = {int(z) for s in training for z in s.atomic_numbers} | {
        int(z) for data in sets for s in data.structures for z in s.atomic_numbers
    }
    model = AtomFM(cfg.model_config())
    atomfm_params = {
        "parameters": energy_parameters(model, training[0]),  # what the race trains
        "parameters_with_heads": count_parameters(model),  # the recipe's untrained heads too
    }
    mace = MaceSettings(
        channels=args.mace_channels,
        r_max=cfg.data.cutoff,
        max_atoms=cfg.data.max_atoms,
        dtype=args.mace_dtype,
    )
    zs = sorted(args.eval_elements)
    if args.mace_equal_params:
        target = atomfm_params["parameters"]
        mace = dataclasses.replace(mace, channels=channels_for_parameters(mace, zs, target))
    mace_params = count_parameters(build_mace(mace, zs))
    print(
        f"atomfm: {atomfm_params['parameters']:,} parameters in its energy "
        f"({atomfm_params['parameters_with_heads']:,} with all heads); MACE {mace.hidden_irreps}: {mace_params:,}",
        flush=True,
    )
    load_before = os.getloadavg()
    if args.score_only:  # the race has run (a scoring step failed, or a new task): score its models again
        trained = training_records(run_dir)
        shutil.rmtree(run_dir / "eval", ignore_errors=True)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        trained = race(args, mace, corpus, run_dir)
    load_after = os.getloadavg()
    start = time.monotonic()
    results = [json.loads(p.read_text()) for p in score(cfg, mace, run_dir, sets, training)]
    print(f"scored in {time.monotonic() - start:.0f} s", flush=True)

    models = {
        "atomfm": {**atomfm_params, **{k: v for k, v in trained["atomfm"].items() if k != "curve"}},
        f"mace-{mace.channels}ch": {
            "parameters": mace_params,
            **{k: trained["mace"][k] for k in ("steps", "structures_seen", "atoms_seen")},
        },
        "reference+zero-force": {"parameters": len(zs)},
    }
    rows = [metric_row(r) for r in results]
    rows.sort(key=lambda r: ([d.name for d in sets].index(r["data"]), list(models).index(r["model"])))
    print_table(rows, models)
    report = {
        "benchmark": "bench_accuracy",
        "domain": args.domain,
        "source": spec.source,
        "corpus": str(Path(args.corpus).resolve()),
        "budget_s": args.budget_s,
        "atomfm_config": args.atomfm_config,
        "atomfm_resolved_config": cfg.to_dict(),
        "mace_settings": {**dataclasses.asdict(mace), "hidden_irreps": mace.hidden_irreps},
        "threads_per_model": 1,
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [load_before, load_after],
        "models": models,
        "training": trained,
        "rows": rows,
        "result_files": [str(p) for p in sorted((run_dir / "eval").glob("*.json"))],
        "data": [d.identity() for d in sets],
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    write_text_atomic(out, json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
