"""Label a stream of structures in worker processes: ordered, bounded, with a progress bar."""

from __future__ import annotations

import logging
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing

from tqdm import tqdm

from data_pipeline.labels.base import Labeller
from data_pipeline.labels.process_pool import default_workers, ordered_process_map
from data_pipeline.labels.registry import labeller_class
from data_pipeline.schema import BadInputError, Structure

log = logging.getLogger(__name__)

# (labelled structure, None) or (None, (reason, record, field)): BadInputError's keyword fields do not pickle.
Outcome = tuple[Structure | None, tuple[str, str, str] | None]

_worker_labeller: Labeller | None = None


def _build_worker_labeller(method: str) -> None:
    global _worker_labeller
    _worker_labeller = labeller_class(method)()


def _label_with(labeller: Labeller, s: Structure) -> Outcome:
    try:
        return labeller(s), None
    except BadInputError as err:
        return None, (err.reason, str(err.record), str(err.field))


def _label_in_worker(s: Structure) -> Outcome:
    return _label_with(_worker_labeller, s)


def label_structures(
    structures: Iterable[Structure],
    method: str,
    *,
    workers: int | None = None,
    skip_bad: bool = False,
    counter: Counter | None = None,
    progress: bool = True,
) -> Iterator[Structure]:
    """Labelled copies of ``structures``, in input order, computed by ``workers`` processes.

    ``method``: ``xtb``, ``emt``, ``amber14``, ``chgnet`` or ``auto``. ``workers`` defaults to the number of
    cores; 0 labels in this process. A structure the method cannot label raises :class:`BadInputError`
    naming its key and ``labels.<method>``; with ``skip_bad`` it is logged, skipped and counted in
    ``counter[field]``. Input is consumed lazily, a few structures per worker ahead of the output.
    """
    labeller_type = labeller_class(method)
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    counter = Counter() if counter is None else counter
    total = len(structures) if isinstance(structures, Sized) else None
    return _labelled(structures, method, labeller_type, workers, skip_bad, counter, progress, total)


def _labelled(
    structures: Iterable[Structure],
    method: str,
    labeller_type: type[Labeller],
    workers: int,
    skip_bad: bool,
    counter: Counter,
    progress: bool,
    total: int | None,
) -> Iterator[Structure]:
    in_flight: deque[str] = deque()  # keys submitted and not yet yielded, in order

    def feed() -> Iterator[Structure]:
        for s in structures:
            in_flight.append(s.key)
            yield s

    if workers == 0:
        local = labeller_type()
        outcomes: Iterator[Outcome] = (_label_with(local, s) for s in feed())
    else:
        outcomes = ordered_process_map(
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
    with closing(outcomes), bar:  # leaving early shuts the workers down
        try:
            for labelled, failure in outcomes:
                in_flight.popleft()
                bar.update(1)
                if failure is None:
                    yield labelled
                    continue
                reason, record, field = failure
                err = BadInputError(reason, record=record, field=field)
                if not skip_bad:
                    raise err
                counter[field] += 1
                log.warning("skipped: %s", err)
        except BrokenProcessPool:
            key = in_flight[0] if in_flight else "?"
            raise RuntimeError(
                f"a {method} labelling worker died (killed for memory, or a crash inside the "
                f"labelling library) while labelling {key}"
            ) from None
