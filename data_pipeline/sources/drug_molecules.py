"""Drug-like molecules with hydrogens and 3D coordinates: MiniDrugBank (371 DrugBank molecules), which the
openmmforcefields sdist on PyPI ships as ``openmmforcefields/data/minidrugbank/MiniDrugBank.sdf``.

The demo corpus does not use it (its molecules come from the CCD, RDKit's NCI SMILES and G2, 10–30 atoms), so
its 30–80-atom molecules test how a model trained on small molecules carries over to the sizes users bring.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from data_pipeline.atomic_files import atomic_path
from data_pipeline.readers import ReaderOptions, read_structures
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.sources.molecule_identity import ORGANIC_ELEMENTS
from data_pipeline.sources.perturb import rattle

OPENMMFORCEFIELDS_VERSION = "0.15.1"
MINIDRUGBANK_MEMBER = "openmmforcefields/data/minidrugbank/MiniDrugBank.sdf"


def fetch_minidrugbank(folder: str | Path, *, version: str = OPENMMFORCEFIELDS_VERSION) -> Path:
    """``folder/MiniDrugBank.sdf``, taken from the openmmforcefields sdist (downloaded into ``folder`` with
    pip, from the package index pip is configured for, when it is not there yet)."""
    folder = Path(folder)
    sdf = folder / "MiniDrugBank.sdf"
    if sdf.is_file():
        return sdf
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / f"openmmforcefields-{version}.tar.gz"
    if not sdist.is_file():
        command = [sys.executable, "-m", "pip", "download", f"openmmforcefields=={version}", "--no-deps"]
        command += ["--no-binary", ":all:", "--quiet", "-d", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not sdist.is_file():
            raise BadInputError(
                f"pip could not download the openmmforcefields {version} sdist ({done.stderr.strip()[-500:]}); "
                f"download it by hand (pip download openmmforcefields=={version} --no-deps --no-binary :all:) "
                f"into {folder}",
                path=str(sdist),
            )
    member = f"openmmforcefields-{version}/{MINIDRUGBANK_MEMBER}"
    with tarfile.open(sdist) as archive:
        try:
            data = archive.extractfile(member)
        except KeyError:
            data = None
        if data is None:
            raise BadInputError(f"the sdist has no {member}", path=str(sdist))
        with atomic_path(sdf) as tmp:
            tmp.write_bytes(data.read())
    return sdf


def drug_molecules(
    sdf: str | Path,
    *,
    min_atoms: int = 30,
    max_atoms: int = 80,
    elements: Collection[int] = ORGANIC_ELEMENTS,
    exclude_groups: Collection[str] = (),
    max_abs_charge: int = 1,
    max_displacement: float = 0.02,
    seed: int = 0,
    skipped: Counter | None = None,
) -> Iterator[Structure]:
    """The molecules of an SDF with ``min_atoms``..``max_atoms`` atoms (H included), made only of
    ``elements``, with a total charge of at most ``max_abs_charge`` in size (the demo corpus has 0 and ±1)
    and whose connectivity (InChIKey first block, the group id) is not in ``exclude_groups``, each rattled
    by at most ``max_displacement`` Å.

    Keys ``minidrugbank/<molblock name>``. ``skipped`` counts what was left out, by reason (``atoms``,
    ``elements``, ``charge``, ``excluded``, and the reader's fields for molblocks RDKit cannot read).
    """
    skipped = Counter() if skipped is None else skipped
    allowed = {int(z) for z in elements}
    rng = np.random.default_rng(seed)
    for s in read_structures(sdf, options=ReaderOptions(skip_bad=True), counter=skipped):
        if not min_atoms <= s.num_atoms <= max_atoms:
            skipped["atoms"] += 1
            continue
        if not {int(z) for z in s.atomic_numbers} <= allowed:
            skipped["elements"] += 1
            continue
        if abs(s.charge) > max_abs_charge:
            skipped["charge"] += 1
            continue
        if s.group_id in exclude_groups:
            skipped["excluded"] += 1
            continue
        name = s.extra.get("name") or s.key.rsplit("/", 1)[-1]
        yield replace(
            s,
            key=f"minidrugbank/{name}",
            positions=rattle(np.asarray(s.positions, dtype=np.float64), max_displacement, rng).astype(
                np.float32
            ),
            extra={"origin": "MiniDrugBank (openmmforcefields sdist)", "name": name},
        )
