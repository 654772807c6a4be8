"""Per-residue classification (three-state secondary structure) through the ``residue`` head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task
from train.tasks.corruption import CorruptionState


def residue_classes(batch: AtomBatch, residue_index: Tensor, column: int = 0) -> Tensor:
    """[R] the class of each row of the residue head (``residue_index`` [R, 2]: graph, residue_id) from the
    batch's per-atom labels (``atom_labels[:, column]``, one class per residue); −1 where unlabelled."""
    on_residue = batch.residue_id >= 0
    graph, resid = batch.batch[on_residue], batch.residue_id[on_residue]
    stride = int(resid.max()) + 1 if resid.numel() else 1
    keys = residue_index[:, 0] * stride + residue_index[:, 1]
    slot = torch.searchsorted(keys, graph * stride + resid)
    labels = batch.atom_labels[on_residue, column]
    out = torch.full((keys.numel(),), -1, dtype=torch.int64, device=keys.device)
    return out.scatter_reduce(0, slot, labels, reduce="amax")


class ResidueClassification(Task):
    """Cross-entropy of the ``residue`` head's logits against each labelled residue's class (the head's
    ``target``, carried by the stream as ``batch.atom_labels``), per clean residue."""

    name = "residue_class"
    outputs = ("residue",)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        if batch.atom_labels.shape[1] == 0:
            raise ValueError(
                "the residue_class task needs the residue head's target (model.overrides.head_options."
                "residue.target: secondary_structure), which the stream then carries"
            )
        index = out["residue_index"]
        classes = residue_classes(batch, index)
        keep = (classes >= 0) & state.clean[index[:, 0]]
        logits = out["residue"][keep]
        error = F.cross_entropy(logits, classes[keep], reduction="none")
        return LossTerms(values=error, domain=batch.domain[index[keep, 0]])
