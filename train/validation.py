"""Validation during training: every ``validation.every`` steps the val split is scored per domain (energy
MAE per atom, force MAE, stress MAE where labelled, in meV units; ``all`` pools every atom, ``mean`` averages
the domains), logged, and the best checkpoint is kept.

Each rank scores its share of the split (structure i goes to rank i mod world size) with the forces the run
trains (−∂E/∂x or the direct head); one all-reduce sums the errors. ``validation.patience`` validations
without improvement stop the run (early stopping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from data_pipeline.corpus_reader import read_split
from data_pipeline.schema import DOMAINS, BadInputError, Structure
from data_pipeline.stream import StreamConfig
from model.atomfm import AtomFM
from model.predict import label_errors, predict_structures
from train.config import ValidationConfig
from train.engine.distributed import DistContext

COLUMNS = ("energy_abs", "force_abs", "stress_abs")  # summed (value, count) per domain
METRIC_OF_COLUMN = {"energy_abs": "energy_mae", "force_abs": "force_mae", "stress_abs": "stress_mae"}


class Validator:
    """Scores the model on this rank's share of the val split; ``best`` tracks the chosen metric."""

    def __init__(self, cfg: ValidationConfig, data: StreamConfig, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        try:
            structures = list(read_split(data.corpus, cfg.split))
        except BadInputError as err:
            raise BadInputError(
                f"validation: {err.reason}", path=err.path, field="validation.split"
            ) from None
        if cfg.domains is not None:
            structures = [s for s in structures if s.domain in cfg.domains]
        if cfg.max_structures is not None and len(structures) > cfg.max_structures:
            # evenly spaced over the split's order (source by source): every domain keeps its share
            spacing = len(structures) / cfg.max_structures
            structures = [structures[int(i * spacing)] for i in range(cfg.max_structures)]
        self.total = len(structures)
        self.mine: list[Structure] = structures[ctx.rank :: ctx.world_size]

    def score(self, model: AtomFM, forces: str) -> dict[str, float]:
        """``{"val/<domain>/<metric>": value}`` over the whole split (collective)."""
        sums = torch.zeros(len(DOMAINS) + 1, len(COLUMNS), 2, dtype=torch.float64)
        was_training = model.training
        model.eval()
        try:
            for s, pred in predict_structures(model, self.mine, forces=forces, max_atoms=self.cfg.max_atoms):
                errors = label_errors(s, pred)
                for row in (DOMAINS.index(s.domain), len(DOMAINS)):
                    for c, column in enumerate(COLUMNS):
                        if column in errors:
                            sums[row, c] += torch.tensor(errors[column], dtype=torch.float64)
        finally:
            model.train(was_training)
        sums = self.ctx.all_reduce_sum(sums)
        out = {}
        for row, domain in enumerate((*DOMAINS, "all")):
            for c, column in enumerate(COLUMNS):
                total, count = sums[row, c].tolist()
                if count > 0:
                    out[f"val/{domain}/{METRIC_OF_COLUMN[column]}"] = 1000.0 * total / count
        for metric in METRIC_OF_COLUMN.values():  # every domain counts once, whatever its atom count
            per_domain = [out[f"val/{d}/{metric}"] for d in DOMAINS if f"val/{d}/{metric}" in out]
            if per_domain:
                out[f"val/mean/{metric}"] = sum(per_domain) / len(per_domain)
        return out


@dataclass
class BestTracker:
    """The best value of the chosen metric so far, where it was, and validations since it improved."""

    value: float = math.inf
    step: int | None = None
    checkpoint: str | None = None
    since_improved: int = 0

    def update(self, value: float | None, step: int) -> bool:
        """Record a validation; True when ``value`` is a new best."""
        if value is not None and value < self.value:
            self.value, self.step, self.since_improved = value, step, 0
            return True
        self.since_improved += 1
        return False
