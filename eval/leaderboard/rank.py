"""Ranks: per board (task, data) and domain on the task's primary metric, per board, and overall.

- A domain rank orders the models by the primary metric's value in that domain, best first as its
  ``better`` says. Equal values share the best of their places ("1224" ranking). A model without a value
  there (not evaluated, or the metric is null) has no rank.
- A board rank is the domain rank in "all" when the task reports one; otherwise the models are ordered by
  their mean domain rank, a missing domain counting as one place below the last ranked model.
- The overall rank orders the models by their mean board rank, a board a model is missing from counting as
  one place below that board's last ranked model: skipping a task never helps.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from eval.leaderboard.collect import Result

Board = tuple[str, str]  # (task, data)
ALL = "all"


@dataclass
class Ranking:
    models: list[str]  # best overall first
    overall: dict[str, int]
    mean_rank: dict[str, float]
    boards_ranked: dict[str, int]  # how many boards each model has a rank on
    board: dict[Board, dict[str, int | None]]  # board -> model -> rank (models on the board)
    domain: dict[tuple[Board, str], dict[str, int | None]]  # (board, domain) -> model -> rank


def competition_ranks(scores: dict[str, float | None], better: str = "lower") -> dict[str, int | None]:
    """1 + how many scores are strictly better; None for a missing score."""
    sign = 1.0 if better == "lower" else -1.0
    present = {k: sign * v for k, v in scores.items() if v is not None}
    return {
        k: (None if k not in present else 1 + sum(o < present[k] for o in present.values())) for k in scores
    }


def mean_with_penalty(ranks: list[dict[str, int | None]], models: list[str]) -> dict[str, float]:
    """Each model's mean over ``ranks``, a missing rank counting as one below the last ranked model."""
    total: dict[str, float] = defaultdict(float)
    for by_model in ranks:
        last = max((r for r in by_model.values() if r is not None), default=0)
        for m in models:
            rank = by_model.get(m)
            total[m] += last + 1 if rank is None else rank
    return {m: total[m] / len(ranks) for m in models}


def domains_of(results: list[Result]) -> list[str]:
    """The domains of a board's results, "all" first, then in alphabetical order."""
    found = {d for r in results for d in r.metrics}
    return sorted(found, key=lambda d: (d != ALL, d))


def rank_results(results: list[Result]) -> Ranking:
    models = sorted({r.model for r in results})
    boards: dict[Board, list[Result]] = defaultdict(list)
    for r in results:
        boards[r.board].append(r)
    domain_ranks: dict[tuple[Board, str], dict[str, int | None]] = {}
    board_ranks: dict[Board, dict[str, int | None]] = {}
    for board, on_board in sorted(boards.items()):
        domains = domains_of(on_board)
        for domain in domains:
            domain_ranks[(board, domain)] = _rank_domain(on_board, domain)
        if ALL in domains:
            board_ranks[board] = domain_ranks[(board, ALL)]
        else:
            entered = [r.model for r in on_board]
            means = mean_with_penalty([domain_ranks[(board, d)] for d in domains], entered)
            ranked = {
                m: means[m] for m in entered if any(domain_ranks[(board, d)][m] is not None for d in domains)
            }
            board_ranks[board] = competition_ranks({m: ranked.get(m) for m in entered})
    mean_rank = mean_with_penalty(list(board_ranks.values()), models)
    overall = {
        m: r for m, r in competition_ranks({m: round(v, 9) for m, v in mean_rank.items()}).items() if r
    }
    return Ranking(
        models=sorted(models, key=lambda m: (overall[m], m)),
        overall=overall,
        mean_rank=mean_rank,
        boards_ranked={m: sum(ranks.get(m) is not None for ranks in board_ranks.values()) for m in models},
        board=board_ranks,
        domain=domain_ranks,
    )


def _rank_domain(results: list[Result], domain: str) -> dict[str, int | None]:
    scores: dict[str, float | None] = {}
    better = "lower"
    for r in results:
        metric = r.metrics.get(domain, {}).get(r.primary_metric)
        scores[r.model] = None if metric is None else metric["value"]
        if metric is not None:
            better = metric["better"]
    return competition_ranks(scores, better)
