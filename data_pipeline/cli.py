"""`atomfm data ...`: ingest files into shards, inspect or upgrade a corpus, build the demo corpus."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build, inspect and stream sharded corpora")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = dsub.add_parser("ingest", help="read structure files, validate, label and write webdataset shards")
    p.add_argument("inputs", nargs="+", help="files, folders or globs (extxyz, ASE db/aselmdb, PDB, mmCIF, CIF, SDF/MOL)")
    p.add_argument("--out", required=True, help="corpus folder (shards + manifest.json)")
    p.add_argument("--domain", choices=["molecule", "protein", "material"], default=None,
                   help="domain of every input (default: inferred from the format)")
    p.add_argument("--label", default="none",
                   help="label generator: xtb, emt, amber14, chgnet, auto (by domain) or none (keep labels the files carry)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument("--shard-size", type=int, default=1000, help="structures per shard")
    p.add_argument("--workers", type=int, default=None, help="labelling processes (default: number of cores)")
    p.add_argument("--source", default=None, help="name recorded as the source of these records")
    p.add_argument("--protein-models", choices=["first", "all"], default="first",
                   help="multi-model PDB/mmCIF files (NMR ensembles): first model only, or every model as a frame")
    p.add_argument("--altloc", choices=["first", "occupancy"], default="occupancy",
                   help="alternate locations: highest occupancy (default) or first listed")
    p.add_argument("--keep-water", action="store_true", help="keep water molecules in protein files")
    p.add_argument("--keep-ligands", action="store_true", help="keep hetero groups (ligands, ions) in protein files")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    p.add_argument("--split-fractions", default="0.9,0.05,0.05", help="train,val,test fractions")
    p.add_argument("--rebuild", action="store_true",
                   help="delete this source's shards and ingest it again (default: resume an interrupted run)")
    p.set_defaults(func=_run("data_pipeline.ingest_cli", "main"))

    p = dsub.add_parser("inspect", help="print a corpus summary and verify shard checksums")
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 verification of shards")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run("data_pipeline.inspect_corpus", "main"))

    p = dsub.add_parser("upgrade", help="rewrite an old corpus (atom counts inline) in the current manifest layout")
    p.add_argument("corpus", help="corpus folder")
    p.set_defaults(func=_run("data_pipeline.upgrade_corpus", "main"))

    p = dsub.add_parser("demo", help="build the three-domain demo corpus from real structures shipped in packages")
    p.add_argument("--out", required=True, help="corpus folder")
    p.add_argument("--scale", choices=["smoke", "demo", "full"], default="demo")
    p.add_argument("--workers", type=int, default=None, help="labelling processes (default: number of cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--protein-chains", type=int, default=None, help="protein chains instead of the scale's (demo: 8)"
    )
    p.set_defaults(func=_run("data_pipeline.demo", "main"))

    p = dsub.add_parser("relabel", help="label a corpus's structures at another level of theory into a new corpus")
    p.add_argument("corpus", help="corpus folder to read (every split)")
    p.add_argument("--label", required=True, help="labeller: xtb, xtb-gfn1, emt, amber14, chgnet, auto")
    p.add_argument("--out", required=True, help="new corpus folder")
    p.add_argument("--domain", choices=["molecule", "protein", "material"], default=None)
    p.add_argument("--max-groups", type=int, default=None, help="a seeded subset of this many groups (molecules)")
    p.add_argument("--source", default=None, help="source name in the new corpus (default relabel-<label>)")
    p.add_argument("--workers", type=int, default=None, help="labelling processes (default: number of cores)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run("data_pipeline.relabel", "main"))

    p = dsub.add_parser(
        "annotate", help="add labels derived from the structures (secondary structure) into a new corpus"
    )
    p.add_argument("corpus", help="corpus folder to read (every split)")
    p.add_argument("--with", dest="annotation", required=True, help="annotation: secondary_structure (DSSP)")
    p.add_argument("--out", required=True, help="new corpus folder")
    p.add_argument("--domain", choices=["molecule", "protein", "material"], default=None)
    p.add_argument("--max-groups", type=int, default=None, help="a seeded subset of this many groups")
    p.add_argument("--source", default=None, help="source name in the new corpus (default: the annotation's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run("data_pipeline.annotate", "main"))

    p = dsub.add_parser(
        "subset", help="copy a seeded subset of one split (whole groups, labels kept) into a new corpus"
    )
    p.add_argument("corpus", help="corpus folder to read")
    p.add_argument("--out", required=True, help="new corpus folder")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--structures", type=int, default=None, help="how many structures (default: all of the split)")
    p.add_argument("--domain", choices=["molecule", "protein", "material"], default=None)
    p.add_argument("--source", default=None, help="source name in the new corpus (default subset-<split>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the group order (one seed: nested subsets)")
    p.set_defaults(func=_run("data_pipeline.subset", "main"))

    data.set_defaults(func=lambda args: data.print_help() or 0)


def _run(module: str, name: str):
    """Import the command's module only when it runs, so `atomfm --help` stays fast."""

    def call(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args) or 0)

    return call
