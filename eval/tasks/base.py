"""What an evaluation task is: it scores a predictor on data and returns the body of a result file."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from data_pipeline.schema import Structure
from eval.data import EvalData


class Predictor(Protocol):
    """See ``eval/predictors.py``: a checkpoint, an ASE calculator, or the reference baseline."""

    name: str
    kind: str

    def identity(self) -> dict[str, Any]: ...

    def predict(self, structures: list[Structure]) -> Any: ...

    def calculator(self, level_of_theory: str | None = None) -> Any: ...


class EvalTask:
    """A named evaluation. ``run`` returns ``{"metrics": ..., "details": ...}`` (plus ``per_element`` and
    ``parity`` where they apply); ``applies_to`` says whether the data has what the task needs."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    description: ClassVar[str]
    baseline_applies: ClassVar[bool] = False  # whether the reference+zero-force baseline can be scored

    def applies_to(self, data: EvalData) -> str | None:
        """None when the task can run on ``data``, else why not (shown to the user)."""
        return None

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        raise NotImplementedError
