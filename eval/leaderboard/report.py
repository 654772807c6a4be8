"""``build_report``: result files in, ``report.md``, the static site and its PNGs out (the fairchem reducer's
half: it reads only what ``atomfm eval`` wrote)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from data_pipeline.atomic_files import write_text_atomic
from eval.leaderboard.collect import Result, collect_results
from eval.leaderboard.html import Figures, model_pages, write_site
from eval.leaderboard.markdown import markdown_report
from eval.leaderboard.plots import (
    element_table_plot,
    interval_plot,
    learning_curve_plot,
    parity_plot,
    pretraining_curve_plot,
)
from eval.leaderboard.pretraining import Pair, learning_curves, pretraining_pairs, pretraining_table
from eval.leaderboard.rank import Ranking, domains_of, rank_results
from eval.leaderboard.tables import anchor, board_tables, board_title, overall_table

PLOTS = "plots"


def build_report(result_dirs: list[str], out_dir: str) -> Path:
    """Gather the result files in ``result_dirs`` into ``out_dir``; returns the path of its ``index.html``."""
    results = collect_results(result_dirs)
    ranking = rank_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pages = model_pages(ranking.models)
    overall = overall_table(results, ranking, pages)
    boards = board_tables(results, ranking, pages)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    pairs = pretraining_pairs(results)
    gain = pretraining_table(pairs)
    figures = draw_figures(results, ranking, out, pages)
    figures.pretraining = draw_pretraining_curves(pairs, out)
    write_text_atomic(
        out / "report.md", markdown_report(results, overall, boards, created, gain, figures.pretraining)
    )
    return write_site(out, results, ranking, overall, boards, figures, pages, created, gain)


def draw_pretraining_curves(pairs: list[Pair], out: Path) -> list[tuple[str, str]]:
    """One PNG per (board, domain) whose pairs span two or more training-set sizes."""
    drawn = []
    for (board, domain), arms in learning_curves(pairs).items():
        metric = next(p.scratch.primary_metric for p in pairs if p.board == board)
        title = f"{board_title(board)}\n{domain}: pretrained vs from scratch"
        path = pretraining_curve_plot(arms, metric, title, out / PLOTS / f"pretraining-{anchor(*board, domain)}.png")
        if path is not None:
            drawn.append((f"{domain}: {metric} against training structures", path.relative_to(out).as_posix()))
    return drawn


def draw_figures(results: list[Result], ranking: Ranking, out: Path, pages: dict[str, str]) -> Figures:
    """Every PNG of the report under ``out/plots``: one interval plot per board; per result its parity plots
    and per-element tables, per domain; per model its learning curve."""
    figures = Figures()
    for board in ranking.board:
        on_board = sorted(
            (r for r in results if r.board == board), key=lambda r: (ranking.overall[r.model], r.model)
        )
        primary = on_board[0].primary_metric
        rows = {
            d: [(r.model, r.metrics.get(d, {}).get(primary)) for r in on_board] for d in domains_of(on_board)
        }
        path = interval_plot(rows, primary, board_title(board), out / PLOTS / f"board-{anchor(*board)}.png")
        if path is not None:
            figures.boards[board] = path.relative_to(out).as_posix()
    for r in results:
        folder = out / PLOTS / Path(pages[r.model]).stem
        for domain in domains_of([r]):
            name = anchor(r.task, r.data, domain)
            parity = (r.record.get("parity") or {}).get(domain)
            if parity:
                path = parity_plot(
                    parity, r.metrics.get(domain, {}), f"{r.model} · {domain}", folder / f"parity-{name}.png"
                )
                if path is not None:
                    figures.parity.setdefault(r.path, []).append((domain, path.relative_to(out).as_posix()))
            by_element = (r.record.get("per_element") or {}).get(domain)
            if by_element:
                metric = _element_metric(r, by_element)
                title = f"{r.model} · {domain} · {metric} per element"
                path = element_table_plot(by_element, metric, title, folder / f"elements-{name}.png")
                if path is not None:
                    figures.elements.setdefault(r.path, []).append(
                        (f"{metric} per element · {domain}", path.relative_to(out).as_posix())
                    )
        curve = r.record["model"].get("training_curve")
        if curve and r.model not in figures.curves:
            path = learning_curve_plot(curve, f"{r.model}: training", folder / "learning-curve.png")
            if path is not None:
                figures.curves[r.model] = path.relative_to(out).as_posix()
    return figures


def _element_metric(result: Result, by_element: dict) -> str:
    """The task's primary metric when elements report it, else the first metric they report."""
    names = [n for by_name in by_element.values() for n in by_name]
    return result.primary_metric if result.primary_metric in names else names[0]
