"""`atomfm generate`: sample molecules from a diffusion checkpoint, write SDF and extxyz, and score them.

atomfm generate --checkpoint runs/diffusion/export --data data/demo --n 1000 --atoms 9-29 --out mols.sdf
atomfm generate --checkpoint CKPT --data data/demo --n 1000 --out mols.sdf --steps 200 --seed 1 --score results
atomfm generate --baseline random-coordinates --data data/demo --n 1000 --out random.sdf --score results
atomfm generate --samples other_code.sdf --data data/demo --name edm --score results   # score a file

Writes OUT (.sdf, bonds perceived by rdDetermineBonds), the same molecules as .extxyz beside it, and a .json
of what was done (checkpoint, seed, steps, sizes, valence-guard counts). --score DIR scores the molecules
(eval/tasks/generation.py) and writes one result file there for `atomfm leaderboard`. The same checkpoint,
data, --n, --atoms, --steps, --seed and --atoms-per-batch give the same molecules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from eval.generation.baselines import BASELINES

GUARD_MODES = ("off", "reject", "repair")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample molecules from a diffusion checkpoint (or a baseline), write SDF/extxyz, score them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="CKPT", help="export, checkpoint or run folder of a diffusion model"
    )
    source.add_argument(
        "--baseline", choices=sorted(BASELINES), help="a reference set built from training molecules"
    )
    source.add_argument("--samples", metavar="FILE", help="score the molecules of an SDF or extxyz file")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="CORPUS",
        help="corpus folders whose training molecules give the atom counts, elements and novelty reference "
        "(default: the corpus named in the checkpoint's run config)",
    )
    p.add_argument("--split", default="train", help="split of the reference molecules (default: train)")
    p.add_argument("--n", type=int, default=1000, help="molecules to generate (default: 1000)")
    p.add_argument(
        "--atoms",
        default=None,
        metavar="N|LOW-HIGH",
        help="atom counts, drawn from the training distribution within this range",
    )
    p.add_argument("--out", default=None, help="SDF to write (an .extxyz and a .json go beside it)")
    p.add_argument("--steps", type=int, default=100, help="diffusion steps (default: 100)")
    p.add_argument(
        "--fragment",
        default=None,
        metavar="FILE",
        help="complete this fragment (the first molecule of an SDF or xyz file): every sample contains it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--valence-guard",
        choices=GUARD_MODES,
        default="off",
        help="reject or repair molecules whose valences are not allowed (counts are reported)",
    )
    p.add_argument(
        "--atoms-per-batch", type=int, default=2000, help="atoms sampled together (part of what a seed fixes)"
    )
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda, ...)")
    p.add_argument(
        "--score", default=None, metavar="DIR", help="score the molecules and write a result file into DIR"
    )
    p.add_argument("--name", default=None, help="name of the sampler in the result file")
    p.add_argument(
        "--xtb-molecules", type=int, default=100, help="valid molecules relaxed with GFN2-xTB (0: none)"
    )
    p.add_argument("--xtb-steps", type=int, default=100, help="L-BFGS steps of each relaxation at most")
    p.add_argument(
        "--posebusters", default="mol_fast", help="PoseBusters configuration: mol_fast, mol or off"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from eval.cli import report_written

    return report_written("generate", run, args)


def run(args: argparse.Namespace) -> list[Path]:
    import numpy as np

    from data_pipeline.schema import BadInputError
    from eval.generation.baselines import baseline_molecules
    from eval.generation.molecules import read_molecules, write_extxyz, write_sdf
    from eval.generation.reference import load_training_molecules, parse_atom_range
    from eval.generation.valence_guard import apply_valence_guard

    if args.n < 1:
        raise BadInputError(f"need at least one molecule, got {args.n}", field="n")
    if args.samples is None and args.out is None:
        raise BadInputError("say where to write the molecules (--out mols.sdf)", field="out")
    if args.out is not None and Path(args.out).suffix.lower() != ".sdf":
        raise BadInputError(f"--out must end in .sdf, got {args.out!r}", field="out")
    atoms = parse_atom_range(args.atoms)
    predictor = None
    if args.checkpoint is not None:
        from eval.predictors import CheckpointPredictor

        predictor = CheckpointPredictor(args.checkpoint, name=args.name)
    corpora = args.data or _corpora_of_run(args.checkpoint)
    training = load_training_molecules(corpora, args.split)
    started = time.perf_counter()
    details: dict[str, Any] = {"seed": args.seed, "atoms": args.atoms, "requested": args.n}
    if predictor is not None:
        molecules = _sample(predictor.model, training, atoms, args, details)
    elif args.baseline is not None:
        molecules = baseline_molecules(args.baseline, training, args.n, seed=args.seed, atoms=atoms)
        details["baseline"] = args.baseline
    else:
        molecules = read_molecules(args.samples)
        details["samples"] = str(args.samples)
    molecules, report = apply_valence_guard(molecules, args.valence_guard)
    details["valence_guard"] = report.to_dict()
    if report.mode != "off":
        print(report.summary(), file=sys.stderr)
    details["generation_wall_time_s"] = round(time.perf_counter() - started, 2)
    written: list[Path] = []
    if args.out is not None:
        out = Path(args.out)
        written.append(write_sdf(out, molecules))
        written.append(write_extxyz(out.with_suffix(".extxyz"), molecules))
        sidecar = out.with_suffix(".json")
        sizes = np.bincount([m.num_atoms for m in molecules]).tolist()
        sidecar.write_text(
            json.dumps(
                {**details, "molecules": len(molecules), "size_counts": sizes, **_source(args)}, indent=1
            )
        )
        written.append(sidecar)
    if args.score is not None:
        written.append(_score(args, molecules, training, predictor, details))
    return written


def _sample(
    model: Any, training: Any, atoms: Any, args: argparse.Namespace, details: dict[str, Any]
) -> list[Any]:
    import numpy as np
    import torch
    from tqdm import tqdm

    from eval.generation.molecules import read_molecules
    from eval.generation.sampler import DiffusionSampler

    model = model.to(torch.device(args.device))
    sampler = DiffusionSampler(model, training.elements, steps=args.steps)
    fragment = read_molecules(args.fragment)[0] if args.fragment else None
    if fragment is not None:  # every molecule must be larger than the fragment
        low, high = atoms or (1, max(training.size_histogram))
        atoms = (max(low, fragment.num_atoms + 1), high)
    sizes = training.draw_sizes(args.n, np.random.default_rng(args.seed), atoms)
    details.update(steps=args.steps, elements=training.elements, atoms_per_batch=args.atoms_per_batch)
    details["fragment"] = args.fragment
    with tqdm(
        total=len(sizes) * args.steps, desc="generate", unit="mol-step", disable=args.no_progress
    ) as bar:
        return sampler.sample(
            sizes, args.seed, fragment=fragment, atoms_per_batch=args.atoms_per_batch, on_step=bar.update
        )


def _score(
    args: argparse.Namespace, molecules: list[Any], training: Any, predictor: Any, details: dict[str, Any]
) -> Path:
    from eval.generation.reference import reference_identity
    from eval.results import result_record, write_result
    from eval.tasks.generation import GenerationMetrics, training_smiles

    task = GenerationMetrics(
        xtb_molecules=args.xtb_molecules, xtb_steps=args.xtb_steps, posebusters=args.posebusters
    )
    started = time.perf_counter()
    reference = training_smiles(training.molecules)
    body = task.run(molecules, reference, seed=args.seed, progress=not args.no_progress)
    body["details"] = {"options": task.options(), **details, **body["details"]}
    data = reference_identity(training)
    if predictor is not None:
        model = predictor.identity()
    else:
        kind = "baseline" if args.baseline else "samples"
        name = args.name or (f"baseline-{args.baseline}" if args.baseline else Path(args.samples).stem)
        model = {
            "name": name,
            "kind": kind,
            "path": args.samples,
            "weights_sha256": None,
            "config": None,
            "training_curve": None,
        }
    record = result_record(task.name, task.primary_metric, model, data, body, time.perf_counter() - started)
    return write_result(args.score, record)


def _source(args: argparse.Namespace) -> dict[str, Any]:
    return {"checkpoint": args.checkpoint, "baseline": args.baseline, "samples": args.samples}


def _corpora_of_run(checkpoint: str | None) -> list[str]:
    """The ``data.corpus`` of the run config (``config.yaml``) above a checkpoint, if there is one."""
    import yaml

    from data_pipeline.schema import BadInputError

    if checkpoint is not None:
        for folder in [Path(checkpoint), *Path(checkpoint).resolve().parents][:4]:
            config = folder / "config.yaml"
            if config.is_file():
                corpus = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("corpus")
                if corpus:
                    return [str(c) for c in corpus]
    raise BadInputError(
        "name the corpus whose training molecules the sampler learned from (--data data/demo)", field="data"
    )
