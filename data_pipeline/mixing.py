"""Which sample comes next: domain probabilities (weights or temperature), a weighted mix, a shuffle buffer.

Each step draws from a seeded ``numpy.random.Generator`` in fixed-size blocks, so a stream is a pure
function of its seed and inputs (what exact resume relies on) and costs about a microsecond per sample.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

import numpy as np

T = TypeVar("T")

_BLOCK = 1024


def domain_probabilities(
    sizes: Mapping[str, int], weights: Mapping[str, float] | None = None, temperature: float = 1.0
) -> dict[str, float]:
    """Probability that the next structure comes from each domain.

    sizes: structures per domain. With ``weights`` the probabilities are the normalised weights (a domain
    left out gets 0); without, temperature sampling: ``p_d ∝ n_d^(1/T)`` (T = 1 follows the corpus, large T
    tends to uniform). Raises ValueError naming a weighted domain that has no structures, a negative weight,
    or weights that are all zero.
    """
    if weights is None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        raw = {d: float(n) ** (1.0 / temperature) if n > 0 else 0.0 for d, n in sizes.items()}
    else:
        for d, w in weights.items():
            if w < 0:
                raise ValueError(f"domain weight for {d!r} is negative ({w})")
            if w > 0 and sizes.get(d, 0) == 0:
                known = ", ".join(f"{k} ({n})" for k, n in sorted(sizes.items())) or "none"
                raise ValueError(f"domain {d!r} has weight {w} but no structures; domains present: {known}")
        raw = {d: float(weights.get(d, 0.0)) for d in sizes}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"no domain to draw from: sizes {dict(sizes)}, weights {weights}")
    return {d: w / total for d, w in sorted(raw.items())}


def uniforms(rng: np.random.Generator) -> Iterator[float]:
    """Endless uniform [0, 1) floats, drawn in blocks."""
    while True:
        yield from rng.random(_BLOCK).tolist()


def mix_by_weight(
    streams: Mapping[str, Iterable[T]], probabilities: Mapping[str, float], rng: np.random.Generator
) -> Iterator[T]:
    """Interleave ``streams``: each next item comes from domain d with probability ``probabilities[d]``.

    A finished stream drops out and the others are renormalised; ends when every stream has ended.
    Streams with probability 0 are never read.
    """
    names = [d for d in sorted(streams) if probabilities.get(d, 0.0) > 0]
    iterators = {d: iter(streams[d]) for d in names}
    draws = uniforms(rng)
    while names:
        cumulative = np.cumsum([probabilities[d] for d in names]).tolist()
        total = cumulative[-1]
        while True:
            i = min(bisect.bisect_right(cumulative, next(draws) * total), len(names) - 1)
            try:
                yield next(iterators[names[i]])
            except StopIteration:
                del names[i]
                break


def shuffle_buffer(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Approximate shuffle through a buffer of ``size`` items (0 or 1: input order); yields every item once."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    draws = uniforms(rng)
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(next(draws) * size)
        yield buffer[j]
        buffer[j] = item
    order = rng.permutation(len(buffer)).tolist()
    for j in order:
        yield buffer[j]
