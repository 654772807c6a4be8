"""What a labeller is: one level of theory that turns a structure into a labelled copy of it."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from data_pipeline.schema import BadInputError, Structure


class LabellingError(RuntimeError):
    """A labeller's own refusal of one structure (unsupported element, impossible spin, no periodic cell)."""


class Labeller(ABC):
    """Energy (eV), forces (eV/Å) and, for 3D-periodic cells, stress (eV/Å³, ASE sign) at one level of theory.

    Subclasses implement :meth:`compute`. Calling a labeller turns any failure of the underlying code (SCF
    not converged, no force-field template, ...) into a :class:`BadInputError` naming the record and the
    field ``labels.<name>``. Heavy libraries are imported and heavy state (force fields, network weights)
    is built when a labeller is constructed, once per process.
    """

    name: str
    level_of_theory: str

    @abstractmethod
    def compute(self, s: Structure) -> Structure:
        """``s`` with labels; methods that rebuild the structure (adding hydrogens) return the rebuilt one."""

    def __call__(self, s: Structure) -> Structure:
        try:
            labelled = self.compute(s)
        except BadInputError:
            raise
        except LabellingError as err:
            raise self.failure(s, str(err)) from err
        except Exception as err:  # the labelling libraries raise many types on a structure they cannot handle
            raise self.failure(s, f"{type(err).__name__}: {err}") from err
        if labelled.energy is None or not np.isfinite(labelled.energy):
            raise self.failure(s, f"non-finite energy {labelled.energy}")
        if labelled.forces is not None and not np.isfinite(labelled.forces).all():
            raise self.failure(s, "non-finite forces")
        return labelled

    def failure(self, s: Structure, reason: str) -> BadInputError:
        return BadInputError(
            f"{self.name} labelling failed: {reason}", record=s.key, field=f"labels.{self.name}"
        )
