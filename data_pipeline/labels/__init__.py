"""Labels from real physics: GFN2-xTB (molecules), amber14 (proteins), EMT and CHGNet (crystals).

>>> from data_pipeline.labels import label_outcomes, label_structures
>>> labelled = list(label_structures(structures, "auto", workers=2, skip_bad=True))
>>> failed = [o.failure for o in label_outcomes(structures, "auto") if not o.ok]

Each labelled structure records its ``level_of_theory`` (``gfn2-xtb``, ``amber14``, ``emt``, ``chgnet``).
"""

from data_pipeline.labels.auto import labeller_for
from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.labels.parallel import LabelOutcome, label_outcomes, label_structures
from data_pipeline.labels.registry import LABELLERS, labeller_class

__all__ = [
    "LABELLERS",
    "LabelOutcome",
    "Labeller",
    "LabellingError",
    "label_outcomes",
    "label_structures",
    "labeller_class",
    "labeller_for",
]
