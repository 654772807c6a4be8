"""``report.md``: the overall ranking, then one table per board (task, data) and domain."""

from __future__ import annotations

from eval.leaderboard.collect import Result
from eval.leaderboard.html import GAIN
from eval.leaderboard.rank import Board
from eval.leaderboard.tables import Table, board_title, count_of

LEGEND = (
    "Cells: value [95% bootstrap interval] n=structures the number rests on (groups, for per-group metrics). "
    "★ the task's primary metric, which ranks the models; ↓ lower is better, ↑ higher is better."
)


def markdown_table(table: Table) -> str:
    def heading(title: str, hint: str) -> str:
        return f"{title} ({hint})" if hint else title

    def cell(text: str, note: str, link: str) -> str:
        shown = f"[{text}]({link})" if link else text
        return _escape(f"{shown} {note}".strip())

    lines = [
        "| " + " | ".join(_escape(heading(c.title, c.hint)) for c in table.columns) + " |",
        "|" + "|".join(":---" if c.text else "---:" for c in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(c.text, c.note, c.link) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def markdown_report(
    results: list[Result],
    overall: Table,
    boards: dict[Board, list[Table]],
    created: str,
    gain: Table | None = None,
    curves: list[tuple[str, str]] | None = None,
) -> str:
    parts = [
        "# atomfm leaderboard",
        f"{count_of(len(results), 'result file')}, {count_of(len({r.model for r in results}), 'model')}, "
        f"{count_of(len(boards), 'board')} (task · data); generated {created}.",
        LEGEND,
        "## Overall",
        "Mean of the board ranks; a board a model is missing from counts as one place below its last model.",
        markdown_table(overall),
    ]
    if gain is not None:
        parts += ["## Pretrained versus from scratch", GAIN, markdown_table(gain)]
        parts += [f"![{caption}]({png})" for caption, png in curves or []]
    for board, tables in boards.items():
        primary = next(r.primary_metric for r in results if r.board == board)
        parts += [f"## {board_title(board)}", f"Ranked on {primary}."]
        for table in tables:
            parts += [f"### {table.caption}", markdown_table(table)]
    return "\n\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
