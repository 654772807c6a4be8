"""Label a stream of structures in worker processes: ordered, bounded, with a progress bar."""

from __future__ import annotations

import logging
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass

from tqdm import tqdm

from data_pipeline.labels.base import Labeller
from data_pipeline.labels.process_pool import default_workers, ordered_process_map
from data_pipeline.labels.registry import labeller_class
from data_pipeline.schema import BadInputError, Structure

log = logging.getLogger(__name__)

# What a worker sends back: (labelled structure, None) or (None, (reason, record, field)), because
# BadInputError's keyword fields do not pickle.
WorkerResult = tuple[Structure | None, tuple[str, str, str] | None]

_worker_labeller: Labeller | None = None


@dataclass(frozen=True)
class LabelOutcome:
    """The fate of one input record: its labelled copy, or the error that says why it has none."""

    record: Structure
    structure: Structure | None = None
    failure: BadInputError | None = None

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def ok(self) -> bool:
        return self.failure is None


def _build_worker_labeller(method: str) -> None:
    global _worker_labeller
    _worker_labeller = labeller_class(method)()


def _label_with(labeller: Labeller, s: Structure) -> WorkerResult:
    try:
        return labeller(s), None
    except BadInputError as err:
        return None, (err.reason, str(err.record), str(err.field))


def _label_in_worker(s: Structure) -> WorkerResult:
    return _label_with(_worker_labeller, s)


def label_outcomes(
    structures: Iterable[Structure],
    method: str,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[LabelOutcome]:
    """One :class:`LabelOutcome` per structure, in input order, computed by ``workers`` processes.

    ``method``: ``xtb``, ``emt``, ``amber14``, ``chgnet`` or ``auto``. ``workers`` defaults to the number of
    cores; 0 labels in this process. A structure the method cannot label gets a :class:`BadInputError`
    naming its key and ``labels.<method>`` as its failure. Input is consumed lazily, a few structures per
    worker ahead of the output.
    """
    labeller_type = labeller_class(method)
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    total = len(structures) if isinstance(structures, Sized) else None
    return _outcomes(structures, method, labeller_type, workers, progress, total)


def label_structures(
    structures: Iterable[Structure],
    method: str,
    *,
    workers: int | None = None,
    skip_bad: bool = False,
    counter: Counter | None = None,
    progress: bool = True,
) -> Iterator[Structure]:
    """The labelled copies of :func:`label_outcomes`, in input order.

    A structure the method cannot label raises its :class:`BadInputError`; with ``skip_bad`` it is logged,
    skipped and counted in ``counter[field]``.
    """
    outcomes = label_outcomes(structures, method, workers=workers, progress=progress)
    return _successes(outcomes, skip_bad, Counter() if counter is None else counter)


def _successes(outcomes: Iterator[LabelOutcome], skip_bad: bool, counter: Counter) -> Iterator[Structure]:
    with closing(outcomes):  # leaving early shuts the workers down
        for outcome in outcomes:
            if outcome.ok:
                yield outcome.structure
                continue
            if not skip_bad:
                raise outcome.failure
            counter[outcome.failure.field] += 1
            log.warning("skipped: %s", outcome.failure)


def _outcomes(
    structures: Iterable[Structure],
    method: str,
    labeller_type: type[Labeller],
    workers: int,
    progress: bool,
    total: int | None,
) -> Iterator[LabelOutcome]:
    in_flight: deque[Structure] = deque()  # submitted and not yet yielded, in order

    def feed() -> Iterator[Structure]:
        for s in structures:
            in_flight.append(s)
            yield s

    if workers == 0:
        local = labeller_type()
        results: Iterator[WorkerResult] = (_label_with(local, s) for s in feed())
    else:
        results = ordered_process_map(
            _label_in_worker, feed(), workers=workers, initializer=_build_worker_labeller, initargs=(method,)
        )
    bar = tqdm(
        total=total,
        unit="structure",
        desc=f"labels {method}",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with closing(results), bar:  # leaving early shuts the workers down
        try:
            for labelled, failure in results:
                record = in_flight.popleft()
                bar.update(1)
                if failure is None:
                    yield LabelOutcome(record, structure=labelled)
                else:
                    reason, key, field = failure
                    yield LabelOutcome(record, failure=BadInputError(reason, record=key, field=field))
        except BrokenProcessPool:
            key = in_flight[0].key if in_flight else "?"
            raise RuntimeError(
                f"a {method} labelling worker died (killed for memory, or a crash inside the "
                f"labelling library) while labelling {key}"
            ) from None
