"""The static site: ``index.html`` (overall ranking, one sortable table per board and domain) and a page per
model (its numbers, plots, config and data). Self-contained: CSS and JS inline, images by relative path,
CSV downloads as data: URLs; it works offline from file://."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from data_pipeline.atomic_files import write_text_atomic
from eval.leaderboard.collect import Result
from eval.leaderboard.rank import Board, Ranking
from eval.leaderboard.tables import Table, anchor, board_title, count_of, format_number, result_table
from eval.results import slug

LEGEND = (
    "Each cell: the value, under it the 95% bootstrap interval [low, high] and n, the structures (groups, for "
    "per-group metrics) it rests on; hover for the items. ★ the task's primary metric, which ranks the "
    "models. ↓ lower is better, ↑ higher is better. Click a header to sort; click again to reverse."
)
RANKS = (
    "Per board (task · data) and domain, models are ranked on the primary metric; equal values share a rank. "
    "A board's rank is its rank on “all”, or, for tasks without it, on the mean domain rank. The overall "
    "rank orders the mean board rank; a board a model is missing from counts as one place below that "
    "board's last model."
)

GAIN = (
    "Checkpoints trained alike (steps, seed, data, batch, tasks, learning rate) except for their start: "
    "pretrained weights or from scratch. Gain: how much lower the pretrained arm's error is, as a share of "
    "the scratch arm's; intervals: whether the two 95% intervals are apart. Paired: the gain's own 95% "
    "interval from one bootstrap over the structures both arms were scored on (each draw takes the same "
    "structures for both), narrower than the two separate intervals because what the structures share "
    "cancels; 'ahead' when it excludes zero."
)


@dataclass
class Figures:
    """The report's PNGs, as paths relative to the report folder."""

    boards: dict[Board, str] = field(default_factory=dict)
    curves: dict[str, str] = field(default_factory=dict)  # model -> learning curve
    parity: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)  # result -> [(caption, png)]
    elements: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)  # result -> [(caption, png)]
    pretraining: list[tuple[str, str]] = field(default_factory=list)  # [(caption, png)]: learning curves


def model_pages(models: list[str]) -> dict[str, str]:
    """A distinct ``model-<name>.html`` for each model."""
    pages: dict[str, str] = {}
    for model in models:
        stem, n = f"model-{slug(model)}", 1
        while f"{stem}.html" in pages.values():
            n += 1
            stem = f"model-{slug(model)}-{n}"
        pages[model] = f"{stem}.html"
    return pages


def html_table(table: Table) -> str:
    def header(column: Any) -> str:
        align = "text" if column.text else "num"
        hint = f'<span class="hint">{escape(column.hint)}</span>' if column.hint else ""
        title = f'<span class="title">{escape(column.title)}</span>'
        return f'<th scope="col" class="{align}"><button type="button">{title}{hint}</button></th>'

    def cell(column: Any, c: Any) -> str:
        classes = ["text" if column.text else "num"]
        if column.title == "rank" and c.text == "1":
            classes.append("rank-1")
        sort = "" if c.sort is None else str(c.sort)
        text = f'<a href="{escape(c.link)}">{escape(c.text)}</a>' if c.link else escape(c.text)
        note = f'<span class="note">{escape(c.note)}</span>' if c.note else ""
        hover = f' title="{escape(c.hover)}"' if c.hover else ""
        return f'<td class="{" ".join(classes)}" data-sort="{escape(sort)}"{hover}>{text}{note}</td>'

    head = "".join(header(c) for c in table.columns)
    body = "\n".join(
        "<tr>" + "".join(cell(col, c) for col, c in zip(table.columns, row, strict=True)) + "</tr>"
        for row in table.rows
    )
    csv_url = "data:text/csv;charset=utf-8," + quote(table.csv_text())
    return (
        f'<figure class="table-block" id="{escape(table.name)}">'
        f'<div class="table-head"><h3>{escape(table.caption)}</h3>'
        f'<a class="csv" download="{escape(table.name)}.csv" href="{csv_url}">Download CSV</a></div>'
        f'<div class="scroll"><table class="sortable" data-table="{escape(table.name)}">'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div></figure>"
    )


def write_site(
    out_dir: Path,
    results: list[Result],
    ranking: Ranking,
    overall: Table,
    boards: dict[Board, list[Table]],
    figures: Figures,
    pages: dict[str, str],
    created: str,
    gain: Table | None = None,
) -> Path:
    """Write ``index.html`` and the model pages into ``out_dir``; returns the index's path. ``gain``: the
    pretrained-versus-scratch table (:mod:`eval.leaderboard.pretraining`), shown after the overall ranking."""
    nav = "".join(f'<a href="{escape(pages[m])}">{escape(m)}</a>' for m in ranking.models)
    for model in ranking.models:
        own = [r for r in results if r.model == model]
        body = _model_body(model, own, figures)
        write_text_atomic(out_dir / pages[model], _page(f"{model} · atomfm leaderboard", body, nav, created))
    return write_text_atomic(
        out_dir / "index.html",
        _page(
            "atomfm leaderboard",
            _index_body(results, ranking, overall, boards, figures, pages, gain),
            nav,
            created,
        ),
    )


def _index_body(
    results: list[Result],
    ranking: Ranking,
    overall: Table,
    boards: dict[Board, list[Table]],
    figures: Figures,
    pages: dict[str, str],
    gain: Table | None = None,
) -> str:
    parts = [
        "<h1>atomfm leaderboard</h1>",
        f'<p class="lead">{count_of(len(ranking.models), "model")} on {count_of(len(boards), "board")} '
        f"(task · data), from {count_of(len(results), 'result file')}.</p>",
        f'<p class="legend">{escape(LEGEND)}</p>',
        '<h2 id="overall">Overall</h2>',
        f'<p class="meta">{escape(RANKS)}</p>',
        html_table(overall),
    ]
    if gain is not None:
        parts += [
            '<h2 id="pretraining">Pretrained versus from scratch</h2>',
            f'<p class="meta">{escape(GAIN)}</p>',
            html_table(gain),
            *(_image(png, caption) for caption, png in figures.pretraining),
        ]
    for board, tables in boards.items():
        on_board = [r for r in results if r.board == board]
        data = on_board[0].record["data"]
        facts = [f"ranked on {on_board[0].primary_metric}", count_of(len(on_board), "model")]
        facts += [f"{data[k]} {k}" for k in ("structures", "atoms") if data.get(k) is not None]
        parts += [
            f'<h2 id="{escape(anchor(*board))}">{escape(board_title(board))}</h2>',
            f'<p class="meta">{escape(" · ".join(facts))}</p>',
        ]
        if board in figures.boards:
            parts.append(
                _image(figures.boards[board], f"{on_board[0].primary_metric} per domain; bars: 95% intervals")
            )
        parts += [html_table(t) for t in tables]
    items = "".join(
        f'<li><a href="{escape(pages[m])}">{escape(m)}</a><span class="kind">{escape(_kind(results, m))}</span>'
        f'<div class="meta">overall rank {ranking.overall[m]}, mean rank {ranking.mean_rank[m]:.2f}</div></li>'
        for m in ranking.models
    )
    parts += ['<h2 id="models">Models</h2>', f'<ul class="models">{items}</ul>']
    return "\n".join(parts)


def _model_body(model: str, own: list[Result], figures: Figures) -> str:
    identity = own[0].record["model"]
    facts = {k: v for k, v in identity.items() if k not in ("name", "kind", "config", "training_curve")}
    parts = [
        f'<h1>{escape(model)}<span class="kind">{escape(identity["kind"])}</span></h1>',
        '<p class="meta"><a href="index.html">← leaderboard</a></p>',
        _facts(facts),
    ]
    for r in own:
        data = r.record["data"]
        parts += [
            f"<h2>{escape(board_title(r.board))}</h2>",
            f'<p class="meta">{escape(_data_line(data))} · result file {escape(r.path.name)}</p>',
            html_table(result_table(r, caption="metrics")),
        ]
        for heading, plots in (("Parity", figures.parity), ("Per-element error", figures.elements)):
            if plots.get(r.path):
                images = "".join(_image(src, caption) for caption, src in plots[r.path])
                parts += [f"<h3>{heading}</h3>", f'<div class="plots">{images}</div>']
    parts.append("<h2>Learning curve</h2>")
    if model in figures.curves:
        parts.append(_image(figures.curves[model], "metrics.jsonl of the training run"))
    else:
        parts.append('<p class="meta">No training curve: no metrics.jsonl beside this model.</p>')
    parts += [
        "<h2>Config</h2>",
        f"<pre>{escape(json.dumps(identity.get('config'), indent=2))}</pre>",
        "<h2>Data</h2>",
    ]
    distinct = {json.dumps(r.record["data"], sort_keys=True): r.record["data"] for r in own}
    for data in distinct.values():
        parts += [f"<h3>{escape(str(data['name']))}</h3>", _facts(data)]
    return "\n".join(parts)


def _data_line(data: dict[str, Any]) -> str:
    words = [str(data["name"])]
    words += [f"{data[k]} {k}" for k in ("structures", "atoms") if data.get(k) is not None]
    if isinstance(data.get("domains"), dict):
        words.append(", ".join(f"{d} {n}" for d, n in data["domains"].items()))
    return " · ".join(words)


def _facts(mapping: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return format_number(value)
        if isinstance(value, dict | list):
            return f"<code>{escape(json.dumps(value))}</code>"
        return escape("—" if value is None else str(value))

    rows = "".join(f"<dt>{escape(str(k))}</dt><dd>{show(v)}</dd>" for k, v in mapping.items())
    return f'<dl class="facts">{rows}</dl>'


def _image(src: str, caption: str) -> str:
    return (
        f'<figure class="plot"><img src="{escape(src)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _kind(results: list[Result], model: str) -> str:
    return next(r.kind for r in results if r.model == model)


def _page(title: str, body: str, nav: str, created: str) -> str:
    static = resources.files("eval.leaderboard") / "static"
    css, js = ((static / name).read_text(encoding="utf-8") for name in ("report.css", "report.js"))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>
{css}</style>
</head>
<body>
<header class="top"><div class="wrap"><a class="brand" href="index.html">atomfm leaderboard</a><nav>{nav}</nav></div></header>
<main class="wrap">
{body}
</main>
<footer class="wrap">Generated {escape(created)} by <code>atomfm leaderboard</code> from the result files of <code>atomfm eval</code>.</footer>
<script>
{js}</script>
</body>
</html>
"""
