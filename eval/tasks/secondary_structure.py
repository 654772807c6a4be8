"""Three-state secondary structure per residue (DSSP's H, E, C) through a fine-tuned ``residue`` head.

The checkpoint must carry a ``residue`` head classifying ``secondary_structure`` (``head_options.residue:
{target: secondary_structure, dim: 3}``, trained by ``atomfm finetune`` with the ``residue_class`` task:
``configs/finetune_ss_demo.yaml``); the data are proteins with the per-atom label
(``atomfm data annotate --with secondary_structure``, :mod:`data_pipeline.secondary_structure`). Scored over
every labelled residue of the evaluated structures:

- ``q3``: % of residues whose predicted class is DSSP's (bootstrap 95% interval over structures: the residues
  of one chain are not independent);
- ``baseline_q3``: the majority class of the corpus's training split (of the data itself, for files) predicted
  everywhere, the floor a head must beat;
- ``accuracy_helix``, ``accuracy_strand``, ``accuracy_coil``: % correct among the residues of each class.

Only for checkpoints. Option ``max_atoms`` (2048): atoms per forward pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline.corpus_reader import read_split
from data_pipeline.schema import Structure
from data_pipeline.secondary_structure import CLASSES, SECONDARY_STRUCTURE
from eval.data import EvalData
from eval.metrics import ratio_metric
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.head_outputs import head_outputs

CLASS_NAMES = ("helix", "strand", "coil")


def residue_labels(s: Structure) -> np.ndarray:
    """[R] the class of each residue of ``s`` in residue-number order (the residue head's row order for a
    structure alone), −1 for unlabelled residues."""
    residues = np.asarray(s.per_atom["residue_index"])
    labels = np.asarray(s.per_atom[SECONDARY_STRUCTURE])
    _, first = np.unique(residues, return_index=True)
    return labels[first].astype(np.int64)


class SecondaryStructure(EvalTask):
    name = "secondary_structure"
    primary_metric = "q3"
    description = "three-state DSSP secondary structure per residue from a fine-tuned head (Q3)"

    def __init__(self, max_atoms: int = 2048) -> None:
        self.max_atoms = max_atoms

    def applies_to(self, data: EvalData) -> str | None:
        if not any(SECONDARY_STRUCTURE in s.per_atom for s in data.structures):
            return "no structure carries per-atom secondary_structure (atomfm data annotate)"
        return None

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        model = getattr(predictor, "model", None)
        head = model.heads["residue"] if model is not None and "residue" in model.heads else None
        if head is None or getattr(head, "target", None) != SECONDARY_STRUCTURE:
            why = "the checkpoint has no residue head classifying secondary_structure"
            return {"metrics": {}, "details": {"not_applicable": why}}
        structures = [s for s in data.structures if SECONDARY_STRUCTURE in s.per_atom]
        predicted, reference = [], []
        for _, _, out in self._outputs(model, structures):
            predicted.append(out[0])
            reference.append(out[1])
        majority, fitted_on, train_counts = self._majority(data, reference)
        correct = [p == r for p, r in zip(predicted, reference, strict=True)]
        counts = np.array([len(r) for r in reference], dtype=float)

        def q3(hits: list[np.ndarray]) -> Any:
            sums = np.array([h.sum() for h in hits], dtype=float)
            return ratio_metric(sums, counts, unit="%", scale=100.0, seed=seed, better="higher")

        metrics = {"q3": q3(correct), "baseline_q3": q3([r == majority for r in reference])}
        for k, label in enumerate(CLASS_NAMES):
            sums = np.array([(c & (r == k)).sum() for c, r in zip(correct, reference, strict=True)], float)
            of_class = np.array([(r == k).sum() for r in reference], dtype=float)
            metrics[f"accuracy_{label}"] = ratio_metric(
                sums, of_class, unit="%", scale=100.0, seed=seed, better="higher"
            )
        all_reference = np.concatenate(reference) if reference else np.zeros(0, int)
        details = {
            "structures": len(structures),
            "residues": int(counts.sum()),
            "classes": list(CLASSES),
            "reference_fractions": {
                CLASSES[k]: float((all_reference == k).mean()) if all_reference.size else None
                for k in range(3)
            },
            "majority_class": CLASSES[majority],
            "majority_fitted_on": fitted_on,
            "training_class_counts": train_counts,
        }
        metrics = {k: v.to_dict() for k, v in metrics.items() if v.n > 0}
        return {"metrics": {"protein": metrics, "all": metrics}, "details": details}

    def _outputs(self, model: Any, structures: list[Structure]):
        """(structure, batch, (predicted, reference) classes of its labelled residues), one structure a pass."""
        for s in structures:
            for chunk, batch, out in head_outputs(model, [s], ("residue",), max_atoms=self.max_atoms):
                reference = residue_labels(s)
                keep = reference >= 0
                predicted = out["residue"].argmax(dim=1).cpu().numpy()
                yield chunk, batch, (predicted[keep], reference[keep])

    def _majority(self, data: EvalData, reference: list[np.ndarray]) -> tuple[int, str, dict[str, int]]:
        counts = np.zeros(3, dtype=np.int64)
        fitted_on = "the evaluated structures themselves (no training split)"
        if data.train_corpora:
            for s in read_split(data.train_corpora, "train"):
                if SECONDARY_STRUCTURE in s.per_atom:
                    labels = residue_labels(s)
                    counts += np.bincount(labels[labels >= 0], minlength=3)
            if counts.sum():
                fitted_on = "train split of " + ", ".join(data.train_corpora)
        if not counts.sum():
            for r in reference:
                counts += np.bincount(r, minlength=3)
        return int(np.argmax(counts)), fitted_on, {CLASSES[k]: int(counts[k]) for k in range(3)}
