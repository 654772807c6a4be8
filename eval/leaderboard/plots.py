"""The report's PNG plots (matplotlib, Agg canvas; no pyplot, no display): parity, per-element errors on a
periodic table, learning curves, and each board's primary metric with its 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from eval.leaderboard.tables import count_of, format_number

DPI = 110
PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)  # atomic number of each period's noble gas
NOT_EVALUATED = "#e4e4e7"
PARITY = {"energy": ("energy_mae", "structures"), "forces": ("force_mae", "components")}  # metric, points
STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 10}


def table_position(z: int) -> tuple[int, int]:
    """(row, column) of element ``z`` on the 18-column periodic table; La–Lu and Ac–Lr are rows 8 and 9."""
    period = next(i for i, end in enumerate(PERIOD_ENDS) if z <= end)
    k = z - (PERIOD_ENDS[period - 1] if period else 0) - 1  # place within the period
    if period == 0:
        return 0, 0 if k == 0 else 17
    if period in (1, 2):
        return period, k if k < 2 else k + 10
    if period in (3, 4):
        return period, k
    if 2 <= k <= 16:
        return period + 3, k
    return period, k if k < 2 else k - 14


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def parity_plot(parity: dict[str, Any], metrics: dict[str, Any], title: str, path: Path) -> Path | None:
    """Predicted against reference, one panel per quantity (energy per atom, force components)."""
    quantities = [q for q in PARITY if parity.get(q, {}).get("reference")]
    if not quantities:
        return None
    with _style():
        fig = _figure(4.0 * len(quantities), 4.0)
        for ax, quantity in zip(fig.subplots(1, len(quantities), squeeze=False)[0], quantities, strict=True):
            mae_name, items = PARITY[quantity]
            points = parity[quantity]
            ref, pred = np.asarray(points["reference"], float), np.asarray(points["predicted"], float)
            low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            pad = 0.04 * (high - low or 1.0)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#9ca3af", lw=1, zorder=1)
            size = 5 if quantity == "forces" else 10
            ax.scatter(ref, pred, s=size, alpha=0.45, color="#2563eb", lw=0, zorder=2)
            ax.set_xlim(low - pad, high + pad)
            ax.set_ylim(low - pad, high + pad)
            ax.set_aspect("equal")
            unit = points.get("unit", "")
            ax.set_xlabel(f"reference ({unit})")
            ax.set_ylabel(f"predicted ({unit})")
            heading = quantity
            mae = metrics.get(mae_name)
            if mae is not None and mae["value"] is not None:
                heading += f": MAE {format_number(mae['value'])} {mae['unit']}"
            ax.set_title(f"{heading}\n{len(ref)} of {points.get('points', len(ref))} {items}", fontsize=9)
        fig.suptitle(title)
        return _save(fig, path)


def element_table_plot(
    by_element: dict[str, dict[str, Any]], metric: str, title: str, path: Path
) -> Path | None:
    """The periodic table coloured by ``metric`` of each element; elements not evaluated are grey."""
    values = {
        el: by_name[metric]
        for el, by_name in by_element.items()
        if metric in by_name and by_name[metric]["value"] is not None and el in atomic_numbers
    }
    if not values:
        return None
    numbers = np.array([m["value"] for m in values.values()])
    unit = next(iter(values.values()))["unit"]
    low, high = float(numbers.min()), float(numbers.max())
    norm = (
        LogNorm(low, high) if low > 0 and high > 20 * low else Normalize(low, high if high > low else low + 1)
    )
    cmap = _colormap(values)
    with _style():
        fig = Figure(figsize=(10.0, 5.3))  # fixed axes: a layout engine would measure all 236 labels twice
        ax = fig.add_axes((0.0, 0.0, 0.88, 0.92))
        for z in range(1, PERIOD_ENDS[-1] + 1):
            el = chemical_symbols[z]
            row, column = table_position(z)
            top = -(row - 0.5 if row >= 8 else row)  # the f-block rows sit half a row below the table
            evaluated = values.get(el)
            colour = cmap(norm(evaluated["value"])) if evaluated else NOT_EVALUATED
            ax.add_patch(Rectangle((column, top), 0.94, -0.94, facecolor=colour, edgecolor="none"))
            ink = "#a1a1aa" if not evaluated else ("white" if _luminance(colour) < 0.5 else "#111827")
            ax.text(
                column + 0.47,
                top - 0.36,
                el,
                ha="center",
                va="center",
                fontsize=8.5,
                weight="bold",
                color=ink,
            )
            if evaluated:
                shown = format_number(evaluated["value"])
                ax.text(column + 0.47, top - 0.72, shown, ha="center", va="center", fontsize=6, color=ink)
        for row, label in ((5, "La–Lu"), (6, "Ac–Lr")):
            ax.text(2.47, -row - 0.47, label, ha="center", va="center", fontsize=6, color="#71717a")
        ax.set_xlim(-0.1, 18.1)
        ax.set_ylim(-9.6, 0.1)
        ax.set_aspect("equal")
        ax.axis("off")
        bar = fig.colorbar(ScalarMappable(norm, cmap), cax=fig.add_axes((0.9, 0.2, 0.015, 0.6)))
        bar.set_label(f"{metric} ({unit})" if unit else metric)
        fig.suptitle(f"{title}  ·  {count_of(len(values), 'element')} evaluated; grey: not evaluated", y=0.98)
        return _save(fig, path)


def learning_curve_plot(curve: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Training losses (total and per task), validation metrics and the learning rate against the step."""
    records = [r for r in curve if "step" in r]
    if not records:
        return None
    keys = sorted({k for r in records for k in r})
    panels = [
        ("training loss", [k for k in keys if k == "loss" or (k.startswith("loss/") and k.count("/") == 1)]),
        ("validation", [k for k in keys if k.startswith("val/")]),
        ("learning rate", [k for k in keys if k == "lr"]),
    ]
    panels = [(name, series) for name, series in panels if series]
    if not panels:
        return None
    with _style():
        fig = _figure(4.2 * len(panels), 3.4)
        for ax, (name, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
            positive = True
            for key in series:
                steps = [r["step"] for r in records if r.get(key) is not None]
                ys = [r[key] for r in records if r.get(key) is not None]
                positive &= all(y > 0 for y in ys)
                ax.plot(
                    steps,
                    ys,
                    lw=1.8 if key == "loss" else 1.1,
                    label=key.split("/", 1)[-1] if key != "loss" else "total",
                )
            if name != "learning rate":
                ax.set_yscale("log" if positive else "linear")
                ax.legend(fontsize=7, frameon=False)
            ax.set_title(name)
            ax.set_xlabel("step")
        fig.suptitle(title)
        return _save(fig, path)


def pretraining_curve_plot(
    arms: dict[str, list[tuple[int, dict[str, Any] | None]]], metric: str, title: str, path: Path
) -> Path | None:
    """``metric`` (with its 95% interval) against the training-set size, one line per arm."""
    shown = {arm: [(n, m) for n, m in points if m and m["value"] is not None] for arm, points in arms.items()}
    shown = {arm: points for arm, points in shown.items() if points}
    if not shown:
        return None
    any_metric = next(iter(shown.values()))[0][1]
    with _style():
        fig = _figure(4.6, 3.4)
        ax = fig.subplots()
        for i, (arm, points) in enumerate(shown.items()):
            sizes = [n for n, _ in points]
            values = [m["value"] for _, m in points]
            low = [m["value"] - (m["ci95"][0] if m["ci95"][0] is not None else m["value"]) for _, m in points]
            high = [(m["ci95"][1] if m["ci95"][1] is not None else m["value"]) - m["value"] for _, m in points]
            label = "from scratch" if arm == "scratch" else arm
            ax.errorbar(sizes, values, yerr=[low, high], fmt="o-", ms=4, capsize=3, color=f"C{i}", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training structures")
        unit = any_metric["unit"]
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.legend(fontsize=8, frameon=False)
        ax.grid(color="#e5e7eb", lw=0.8)
        ax.set_axisbelow(True)
        ax.set_title(title, fontsize=9)
        return _save(fig, path)


def interval_plot(
    rows: dict[str, list[tuple[str, dict[str, Any] | None]]], metric: str, title: str, path: Path
) -> Path | None:
    """Per domain, each model's ``metric`` with its 95% interval; ``rows``: domain -> [(model, metric)],
    models in the order they are listed top to bottom (a missing or null metric leaves its row empty)."""
    shown = {d: {m: v for m, v in entries if v and v["value"] is not None} for d, entries in rows.items()}
    shown = {d: by_model for d, by_model in shown.items() if by_model}
    if not shown:
        return None
    models = list(dict.fromkeys(m for entries in rows.values() for m, _ in entries))
    y_of = {m: len(models) - 1 - i for i, m in enumerate(models)}
    any_metric = next(iter(next(iter(shown.values())).values()))
    unit, better = any_metric["unit"], f"{any_metric['better']} is better"
    values = np.array([m["value"] for by_model in shown.values() for m in by_model.values()])
    spread = values.min() > 0 and values.max() > 10 * values.min()  # a baseline far off: log axis
    with _style():
        fig = _figure(3.3 * len(shown) + 1.2, 1.0 + 0.3 * len(models))
        axes = fig.subplots(1, len(shown), squeeze=False, sharey=True)[0]
        for ax, (domain, by_model) in zip(axes, shown.items(), strict=True):
            for model, m in by_model.items():
                low, high = (v if v is not None else m["value"] for v in m["ci95"])
                error = [[m["value"] - low], [high - m["value"]]]
                colour = f"C{models.index(model) % 10}"
                ax.errorbar(m["value"], y_of[model], xerr=error, fmt="o", ms=5, capsize=3, color=colour)
            if spread:
                ax.set_xscale("log")
            ax.set_title(domain)
            ax.set_xlabel(f"{metric} ({unit}), {better}" if unit else f"{metric}, {better}")
            ax.grid(axis="x", color="#e5e7eb", lw=0.8)
            ax.set_axisbelow(True)
        axes[0].set_yticks([y_of[m] for m in models], models)
        axes[0].set_ylim(-0.6, len(models) - 0.4)
        fig.suptitle(title)
        return _save(fig, path)


def _colormap(values: dict[str, Any]) -> Any:
    """Yellow (good) to red (bad), whichever way the metric is better."""
    better = next(iter(values.values()))["better"]
    return colormaps["YlOrRd" if better == "lower" else "YlOrRd_r"]


def _luminance(colour: Any) -> float:
    r, g, b = colour[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _style() -> Any:
    return rc_context(STYLE)
