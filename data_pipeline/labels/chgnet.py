"""CHGNet (the pretrained universal potential shipped in the chgnet wheel) for any crystal."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from ase.units import GPa

from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.schema import Structure

MAX_CHGNET_Z = 94


class CHGNetLabeller(Labeller):
    """CHGNet energy, forces and stress of a 3D-periodic cell; the network is loaded once per process.

    CHGNet predicts energy per atom (eV/atom, made total here) and stress ``(1/V) dE/dε`` in GPa, which is
    ASE's sign convention; it is converted to eV/Å³.
    """

    name = "chgnet"
    level_of_theory = "chgnet"

    def __init__(self, *, model_name: str = "0.3.0", device: str | None = None) -> None:
        from chgnet.model import CHGNet
        from pymatgen.core import Lattice
        from pymatgen.core import Structure as PymatgenStructure

        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a banner on load
            self.model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
        self.model.eval()
        self._lattice, self._structure = Lattice, PymatgenStructure

    def compute(self, s: Structure) -> Structure:
        if s.cell is None or not np.all(s.pbc):
            raise LabellingError("CHGNet needs a cell periodic in all three directions")
        if int(np.max(s.atomic_numbers)) > MAX_CHGNET_Z:
            raise LabellingError(
                f"CHGNet covers Z up to {MAX_CHGNET_Z}; this cell has Z={np.max(s.atomic_numbers)}"
            )
        crystal = self._structure(
            self._lattice(np.asarray(s.cell, dtype=np.float64)),
            [int(z) for z in s.atomic_numbers],
            np.asarray(s.positions, dtype=np.float64),
            coords_are_cartesian=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # CHGNet converts a grad-tracking volume to a float
            prediction = self.model.predict_structure(crystal, task="efs")
        to_total = s.num_atoms if self.model.is_intensive else 1
        return s.with_labels(
            energy=float(prediction["e"]) * to_total,
            forces=np.asarray(prediction["f"], dtype=np.float64),
            stress=np.asarray(prediction["s"], dtype=np.float64) * GPa,
            level_of_theory=self.level_of_theory,
        )
