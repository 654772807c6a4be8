"""The report's tables, built once from the results and the ranks and rendered as Markdown, HTML and CSV."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from eval.leaderboard.collect import Result
from eval.leaderboard.rank import ALL, Board, Ranking, domains_of

MISSING = "—"


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # what the column sorts by; None sorts last
    note: str = ""  # shown under the value: the 95% interval and the sample count
    hover: str = ""
    link: str = ""
    csv: tuple[str, ...] | None = None  # the CSV fields of this cell (default: the text)

    @property
    def csv_fields(self) -> tuple[str, ...]:
        return (self.text,) if self.csv is None else self.csv


@dataclass(frozen=True)
class Column:
    title: str
    hint: str = ""  # unit and which way is better
    csv: tuple[str, ...] | None = None  # the CSV headers of this column (default: the title)
    text: bool = False  # names, left-aligned; numbers are right-aligned


@dataclass(frozen=True)
class Table:
    name: str  # unique in the report: the HTML id and the CSV file name
    caption: str
    columns: list[Column]
    rows: list[list[Cell]]

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([h for c in self.columns for h in (c.csv or (c.title,))])
        for row in self.rows:
            writer.writerow([v for cell in row for v in cell.csv_fields])
        return out.getvalue()


def format_number(x: float | None) -> str:
    """Three significant figures, never hiding integer digits: 3425, 331, 13.7, 0.119."""
    if x is None or not math.isfinite(x):
        return MISSING
    magnitude = abs(x)
    if magnitude >= 100:
        return f"{x:.0f}"
    if magnitude >= 10:
        return f"{x:.1f}"
    if magnitude >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def count_of(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def metric_cell(metric: dict[str, Any] | None) -> Cell:
    """Value, 95% interval and sample count of one metric of a result file."""
    if metric is None or metric["value"] is None:
        return Cell(MISSING, csv=("", "", "", "", ""))
    low, high = metric["ci95"]
    interval = f"[{format_number(low)}, {format_number(high)}]"
    return Cell(
        format_number(metric["value"]),
        sort=metric["value"],
        note=f"{interval} n={metric['n']}",
        hover=f"95% CI {interval} {metric['unit']}; {metric['n']} structures, {metric['n_items']} items",
        csv=tuple(
            "" if v is None else repr(v) for v in (metric["value"], low, high, metric["n"], metric["n_items"])
        ),
    )


def metric_column(name: str, unit: str, better: str, primary: bool) -> Column:
    arrow = "↓" if better == "lower" else "↑"
    return Column(
        f"{name}{' ★' if primary else ''}",
        hint=f"{unit} {arrow}".strip(),
        csv=(
            f"{name} ({unit})" if unit else name,
            f"{name} ci95 low",
            f"{name} ci95 high",
            f"{name} n",
            f"{name} n_items",
        ),
    )


def rank_cell(rank: int | None) -> Cell:
    return Cell(MISSING if rank is None else str(rank), sort=rank, csv=("" if rank is None else str(rank),))


def board_title(board: Board) -> str:
    task, data = board
    return f"{task} · {data}"


def metric_names(results: list[Result]) -> list[str]:
    """The metrics of ``results``: the primary metric first, then as they first appear."""
    names = [results[0].primary_metric] if results else []
    for r in results:
        for by_name in r.metrics.values():
            names += [n for n in by_name if n not in names]
    return names


def metric_identity(results: list[Result], name: str) -> tuple[str, str]:
    """(unit, better) of metric ``name`` as the first result that has it says."""
    for r in results:
        for by_name in r.metrics.values():
            if name in by_name:
                return by_name[name]["unit"], by_name[name]["better"]
    return "", "lower"


def model_cell(model: str, pages: dict[str, str]) -> Cell:
    """The model's name, linked to its page."""
    return Cell(model, sort=model, link=pages.get(model, ""))


def overall_table(results: list[Result], ranking: Ranking, pages: dict[str, str]) -> Table:
    kinds = {r.model: r.kind for r in results}
    boards = list(ranking.board)
    columns = [
        Column("rank"),
        Column("model", text=True),
        Column("kind", text=True),
        Column("mean rank", hint="↓"),
        Column("boards", hint=f"ranked on, of {len(boards)}"),
        *(Column(board_title(b), hint="rank") for b in boards),
    ]
    rows = []
    for m in ranking.models:
        rows.append(
            [
                rank_cell(ranking.overall[m]),
                model_cell(m, pages),
                Cell(kinds[m], sort=kinds[m]),
                Cell(f"{ranking.mean_rank[m]:.2f}", sort=ranking.mean_rank[m]),
                Cell(str(ranking.boards_ranked[m]), sort=ranking.boards_ranked[m]),
                *(rank_cell(ranking.board[b].get(m)) for b in boards),
            ]
        )
    return Table("overall", "overall ranking", columns, rows)


def domain_table(
    board: Board, domain: str, results: list[Result], ranking: Ranking, pages: dict[str, str]
) -> Table:
    """One row per model on ``board``, one column per metric of ``domain``; best first."""
    on_board = [r for r in results if r.board == board]
    in_domain = [r for r in on_board if domain in r.metrics]
    names = [n for n in metric_names(on_board) if any(n in r.metrics[domain] for r in in_domain)]
    ranks = ranking.domain[(board, domain)]
    columns = [Column("rank"), Column("model", text=True), Column("kind", text=True)]
    for name in names:
        unit, better = metric_identity(on_board, name)
        columns.append(metric_column(name, unit, better, primary=name == on_board[0].primary_metric))
    ordered = sorted(on_board, key=lambda r: (ranks[r.model] is None, ranks[r.model] or 0, r.model))
    rows = [
        [
            rank_cell(ranks[r.model]),
            model_cell(r.model, pages),
            Cell(r.kind, sort=r.kind),
            *(metric_cell(r.metrics.get(domain, {}).get(n)) for n in names),
        ]
        for r in ordered
    ]
    task, data = board
    return Table(anchor(task, data, domain), "all domains" if domain == ALL else domain, columns, rows)


def board_tables(results: list[Result], ranking: Ranking, pages: dict[str, str]) -> dict[Board, list[Table]]:
    """Per board, one table per domain ("all" first)."""
    return {
        board: [
            domain_table(board, d, results, ranking, pages)
            for d in domains_of([r for r in results if r.board == board])
        ]
        for board in ranking.board
    }


def result_table(result: Result, caption: str) -> Table:
    """A model's numbers on one board: one row per metric, one column per domain."""
    domains = domains_of([result])
    columns = [Column("metric", text=True), Column("unit", text=True)]
    columns += [
        Column(d, csv=(d, f"{d} ci95 low", f"{d} ci95 high", f"{d} n", f"{d} n_items")) for d in domains
    ]
    rows = []
    for name in metric_names([result]):
        unit, better = metric_identity([result], name)
        star = " ★" if name == result.primary_metric else ""
        rows.append(
            [
                Cell(f"{name}{star}", sort=name, csv=(name,)),
                Cell(f"{unit} {'↓' if better == 'lower' else '↑'}".strip(), sort=unit, csv=(unit,)),
                *(metric_cell(result.metrics[d].get(name)) for d in domains),
            ]
        )
    return Table(anchor(result.model, result.task, result.data), caption, columns, rows)


def anchor(*parts: str) -> str:
    """An HTML id and file stem from ``parts``: letters and digits kept, the rest "_", parts joined by "-"."""
    return "-".join("".join(c if c.isalnum() else "_" for c in p) for p in parts)
