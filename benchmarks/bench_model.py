"""Full-model throughput and memory beside MACE and EquiformerV2, on the same structures, in one run: atoms/s
of inference and of training steps and their peak memory, then the largest structure each model fits in a
memory budget.

    OMP_NUM_THREADS=1 python benchmarks/bench_model.py --quick --eqv2-path /tmp/eqv2-site
    python benchmarks/bench_model.py --lmax 2 4 --device cuda --memory 16GB

Rows, per structure set and lmax (``benchmarks/model_rows.py`` has the models):

- ``atomfm tiny`` (1.12 M parameters) and ``atomfm tiny c80`` (``tiny`` with 80 channels: 1.38 M, the
  size of MACE-medium),
- ``MACE =ch``: MACE at tiny's channels (hidden ``64x0e + 64x1o + 64x2e``) with MACE's two interactions,
  ``MACE =ch =layers`` the same with as many interactions as tiny has layers (four), ``MACE =par``: MACE-MP's
  medium layout (``Cx0e + Cx1o``, spherical harmonics to 3) with C chosen to match ``tiny c80``'s count,
- ``EqV2``: fairchem's EquiformerV2 at tiny's shape (runs when fairchem imports, e.g. from ``--eqv2-path``).

Structures (``bench_structures``): drug-like molecules (MiniDrugBank, 30-80 atoms with hydrogens: 32, or 8
with ``--quick``), a protein of the demo corpus with hydrogens (1,623 atoms, or its first 1,016 atoms with
``--quick``) and rattled diamond silicon (216 atoms). Columns: ``infer`` = energy + conservative forces in
eval mode (what MD and relaxations run); ``direct`` = energy + direct forces, loss backward (pretraining;
MACE has no direct-force head: an energy-only step); ``cons.`` = energy + conservative forces with the graph
kept, loss backward (force-field fine-tuning). Memory: the process's peak resident set during that mode (CPU)
or the CUDA allocator's peak.

Each row runs in its own process under ``--row-memory`` (default 8 GB): a mode that runs out of memory is
recorded (``out_of_memory``), a process that dies is recorded with its signal and peak resident memory, and
the run goes on. The JSON (written atomically after every row, with the git commit measured) holds every
row finished so far.

Largest structure (``--fit-systems``, default the crystal; ``--fit-modes``, default conservative training
and inference): bisection on copies of the structure (``largest_fit``) under ``--fit-memory`` (default:
``--memory``); a ``--memory`` above what the machine can spare is answered by extrapolating the probes'
peak memory against atoms, and the JSON says which figures were measured and which extrapolated.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from largest_fit import extrapolate, largest_fit  # noqa: E402
from memory_guard import environment, parse_bytes, run_guarded  # noqa: E402

from data_pipeline.atomic_files import write_text_atomic  # noqa: E402
from model.atomfm import AtomFM, model_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROW_SCRIPT = Path(__file__).resolve().parent / "model_rows.py"
SYSTEMS = ("ligands", "protein", "crystal")
MODE_COLUMNS = (("infer", "infer"), ("train_direct", "direct"), ("train_conservative", "cons."))
FIT_START_COPIES = {"crystal": 27, "ligands": 1, "protein": 1}  # crystal: 8-atom cells, 216 atoms to start
MACE_MEDIUM_SIZE = {"channels": 80}  # tiny with 80 channels: 1.38 M parameters, MACE-medium's size


def atomfm_parameters(lmax: int, overrides: dict[str, Any]) -> int:
    with torch.device("meta"):
        model = AtomFM(model_config("tiny", lmax=lmax, **overrides))
    return sum(p.numel() for p in model.parameters())


def row_specs(lmax: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows for one lmax, in table order, without the structure set."""
    tiny = model_config("tiny", lmax=lmax).backbone
    shape = {
        k: getattr(tiny, k) for k in ("num_layers", "channels", "attn_channels", "num_heads", "ffn_channels")
    }
    shape["mmax"] = tiny.mmax
    common = {"lmax": lmax, "cutoff": tiny.cutoff, "device": args.device, "quick": args.quick}
    specs = [
        {"label": "atomfm tiny", "model": "atomfm", "overrides": {}, **common},
        {"label": "atomfm tiny c80", "model": "atomfm", "overrides": MACE_MEDIUM_SIZE, **common},
    ]
    # the electrostatics (Ewald on periodic cells) and ZBL off: backbone beside backbone
    if args.backbone_only:
        specs.append(
            {
                "label": "atomfm tiny bare",
                "model": "atomfm",
                "overrides": {"long_range": False, "zbl": False},
                **common,
            }
        )
    if args.compiled:  # torch.compile of the layers: inference and direct training (no double backward)
        specs.append(
            {"label": "atomfm tiny compiled", "model": "atomfm", "overrides": {"compile": True}, **common}
        )
    if args.checkpointed:  # recompute each layer in the backward passes (docs/model.md, "Activation memory")
        specs.append(
            {
                "label": "atomfm tiny ckpt",
                "model": "atomfm",
                "overrides": {"activation_checkpointing": True},
                **common,
            }
        )
    if not args.no_baselines:
        specs += [
            {
                "label": "MACE =ch",
                "model": "mace",
                "layout": "equal_channels",
                "channels": tiny.channels,
                **common,
            },
            {
                "label": "MACE =ch =layers",
                "model": "mace",
                "layout": "equal_channels",
                "channels": tiny.channels,
                "interactions": tiny.num_layers,  # as many interactions as atomfm has layers
                **common,
            },
            {
                "label": "MACE =par",
                "model": "mace",
                "layout": "medium",
                "target_parameters": atomfm_parameters(lmax, MACE_MEDIUM_SIZE),
                **common,
            },
            {"label": "EqV2", "model": "eqv2", "shape": shape, **common},
        ]
    return specs


def run_row(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One row in its own process under the row memory limit; the modes it finished, and how it ended."""
    limit = parse_bytes(args.row_memory)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "row.json"
        child = {**spec, "repeat": args.repeat, "memory_limit_bytes": limit, "modes": args.modes}
        outcome = run_guarded(
            [sys.executable, str(ROW_SCRIPT), json.dumps(child), str(out)],
            limit,
            env=environment(args.eqv2_path if spec["model"] == "eqv2" else None),
            timeout_s=args.row_timeout,
        )
        measured = json.loads(out.read_text()) if out.is_file() else {"modes": {}}
    row = {**spec, **measured, "process": outcome.to_dict()}
    if outcome.returncode != 0:
        row["killed"] = (
            f"{outcome.signal or f'exit {outcome.returncode}'}"
            + (" (resident memory over the row limit)" if outcome.killed_over_limit else "")
            + (f" (over {args.row_timeout:.0f} s)" if outcome.wall_s > args.row_timeout else "")
            + f", peak RSS {outcome.peak_rss_bytes / 2**30:.1f} GiB"
        )
    return row


def git_commit() -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_files": git("status", "--porcelain", "--", "model").splitlines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller molecule set and protein, one timed call"
    )
    parser.add_argument("--lmax", nargs="+", type=int, default=[2])
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--modes", nargs="+", default=[m for m, _ in MODE_COLUMNS])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed calls per mode after a warm-up (median)"
    )
    parser.add_argument("--no-baselines", action="store_true", help="atomfm rows only")
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="add 'atomfm tiny bare': no long-range electrostatics and no ZBL (MACE and EqV2 have neither)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="add 'atomfm tiny compiled' (BackboneConfig.compile; its first call, compiling, is in first_call_s)",
    )
    parser.add_argument(
        "--checkpointed",
        action="store_true",
        help="add 'atomfm tiny ckpt': activation checkpointing on (BackboneConfig.activation_checkpointing)",
    )
    parser.add_argument("--models", nargs="+", default=None, help="only these row labels (e.g. 'MACE =ch')")
    parser.add_argument("--eqv2-path", nargs="*", default=[], help="extra sys.path for the EquiformerV2 rows")
    parser.add_argument("--row-memory", default="8GB", help="memory limit of each row's process")
    parser.add_argument("--row-timeout", type=float, default=1800.0, help="seconds before a row is killed")
    parser.add_argument("--memory", default="16GB", help="budget of the largest-structure figures")
    parser.add_argument("--fit-memory", default=None, help="budget measured by bisection (default --memory)")
    parser.add_argument("--fit-systems", nargs="*", default=["crystal"], choices=SYSTEMS)
    parser.add_argument("--fit-modes", nargs="*", default=["train_conservative", "infer"])
    parser.add_argument("--fit-timeout", type=float, default=900.0, help="seconds before a probe is killed")
    parser.add_argument("--out", default="results/bench_model.json")
    args = parser.parse_args()
    args.repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)

    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_commit(),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "quick": args.quick,
        "repeat": args.repeat,
        "row_memory": args.row_memory,
        "rows": [],
        "largest_fit": [],
        "finished": False,
    }

    def write() -> None:
        write_text_atomic(args.out, json.dumps(result, indent=1))

    specs = [spec for lmax in args.lmax for spec in row_specs(lmax, args)]
    if args.models:
        specs = [spec for spec in specs if spec["label"] in args.models]
    if not any(p for p in args.eqv2_path) and not eqv2_importable():
        specs = [spec for spec in specs if spec["model"] != "eqv2"]
        result["eqv2"] = "not importable here and no --eqv2-path: see docs/model.md, Benchmark"
    for system in args.systems:
        for spec in specs:
            row = run_row({**spec, "system": system}, args)
            result["rows"].append(row)
            write()
            print_row(row)

    budget = parse_bytes(args.memory)
    fit_budget = parse_bytes(args.fit_memory or args.memory)
    for system in args.fit_systems:
        for mode in args.fit_modes:
            for spec in specs:
                fit = largest_fit(
                    {**spec, "system": system, "modes": [mode]},
                    fit_budget,
                    args.eqv2_path if spec["model"] == "eqv2" else [],
                    start_copies=FIT_START_COPIES[system],
                    timeout_s=args.fit_timeout,
                    log=lambda p, s=spec: print(f"  probe {s['label']}: {p}", flush=True),
                )
                atoms_at_budget = (
                    fit["largest_fitting_atoms"] if fit_budget == budget else extrapolate(fit, budget)
                )
                result["largest_fit"].append(
                    {
                        "label": spec["label"],
                        "system": system,
                        "mode": mode,
                        "lmax": spec["lmax"],
                        **fit,
                        "budget_bytes": budget,
                        "atoms_at_budget": atoms_at_budget,
                        "at_budget_is": "measured" if fit_budget == budget else "extrapolated",
                    }
                )
                write()
                print_fit(result["largest_fit"][-1])
    result["finished"] = True
    write()
    print(f"wrote {args.out}")


def eqv2_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("fairchem") is not None


def print_row(row: dict[str, Any]) -> None:
    if not hasattr(print_row, "header"):
        print_row.header = True
        cols = "".join(f"{name:>9}{'GiB':>6}" for _, name in MODE_COLUMNS)
        print(f"{'model':<21}{'lmax':>5}{'system':>9}{'atoms':>7}{'params':>11}{cols}   (atoms/s, peak GiB)")
    head = f"{row['label']:<21}{row['lmax']:>5}{row['system']:>9}{row.get('atoms', 0):>7}{row.get('parameters', 0):>11,}"
    cells = []
    for mode, _ in MODE_COLUMNS:
        m = row.get("modes", {}).get(mode)
        if m is None:
            cells.append(f"{'-':>9}{'':>6}")
        elif "seconds" in m:
            cells.append(f"{m['atoms_per_s']:>9.1f}{m['peak_rss_bytes'] / 2**30:>6.1f}")
        else:
            cells.append(
                f"{'OOM' if m.get('out_of_memory') else 'error':>9}{m['peak_rss_bytes'] / 2**30:>6.1f}"
            )
    tail = f"  {row['killed']}" if "killed" in row else ""
    tail += f"  {row['error']}" if "error" in row else ""
    print(head + "".join(cells) + tail, flush=True)


def print_fit(fit: dict[str, Any]) -> None:
    print(
        f"largest {fit['system']} for {fit['label']} ({fit['mode']}): {fit['largest_fitting_atoms']} atoms in "
        f"{fit['limit_bytes'] / 2**30:.1f} GiB (measured); {fit['atoms_at_budget']} atoms in "
        f"{fit['budget_bytes'] / 2**30:.0f} GiB ({fit['at_budget_is']})",
        flush=True,
    )


if __name__ == "__main__":
    main()
