"""Which test structures a physics task runs on: a seeded, bounded subset, one structure per group."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from data_pipeline.schema import Structure


def crystals(structures: list[Structure]) -> list[Structure]:
    """The materials periodic in all three directions (what an equation of state or a cell relaxation needs)."""
    return [s for s in structures if s.domain == "material" and s.cell is not None and bool(np.all(s.pbc))]


def pick_structures(candidates: list[Structure], limit: int, seed: int) -> list[Structure]:
    """Up to ``limit`` of ``candidates``: one per (domain, group_id) (the first by key, so strained copies of
    one crystal or conformers of one molecule count once), groups in a seeded random order, domains taken in
    turn so that every domain is represented."""
    firsts: dict[tuple[str, str], Structure] = {}
    for s in sorted(candidates, key=lambda s: s.key):
        firsts.setdefault((s.domain, s.group_id or s.key), s)
    rng = np.random.default_rng(seed)
    by_domain: dict[str, list[Structure]] = defaultdict(list)
    for (domain, _), s in sorted(firsts.items()):
        by_domain[domain].append(s)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_domain.items())]
    picked: list[Structure] = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked
