"""Pretrained versus from scratch: pairs of checkpoints trained alike except for where they started.

Each checkpoint's result carries how it was trained (``model.training``, read from the run config its export
keeps: see :func:`eval.predictors.training_summary`). Two results on one board form a pair when their
training agrees on every budget field (:data:`BUDGET`: steps, seed, data, batch size, tasks, learning rate)
and one started from pretrained weights (``init_from`` set) while the other started from scratch. The
section reports, per pair and domain, both arms' primary metric with its interval, the relative gain and
whether the intervals are apart, and, where both results keep their per-structure errors (the accuracy
task's ``per_structure``), the gain's paired bootstrap interval over the structures both were scored on;
pairs that differ only in the size of their training set make a learning curve (metric against training
structures, both arms).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.leaderboard.collect import Result
from eval.leaderboard.rank import ALL, Board, domains_of
from eval.leaderboard.tables import MISSING, Cell, Column, Table, anchor, board_title, metric_cell
from eval.metrics import paired_gain

# what must agree for two runs to have had the same budget (``corpus`` and ``train_structures``: the same data)
BUDGET = ("max_steps", "seed", "split", "domain_weights", "max_atoms", "conservative_forces", "tasks", "lr")
DATA = ("corpus", "train_structures")
PER_STRUCTURE = {"force_mae": "force_abs", "energy_mae": "energy_abs"}  # metric -> per-structure column


@dataclass(frozen=True)
class Pair:
    board: Board
    pretrained: Result
    scratch: Result

    @property
    def training(self) -> dict[str, Any]:
        return self.scratch.record["model"]["training"]

    @property
    def curve_key(self) -> tuple[Board, str]:
        """Pairs with one key differ at most in their training data: points of one learning curve."""
        return self.board, _budget(self.training)


def _budget(training: dict[str, Any]) -> str:
    return json.dumps({k: training.get(k) for k in BUDGET}, sort_keys=True, default=str)


def pretraining_pairs(results: list[Result]) -> list[Pair]:
    """Every (pretrained, from scratch) pair on a board with the same budget and data, in board order."""
    arms: dict[tuple[Board, str, str], dict[str, list[Result]]] = {}
    for r in results:
        training = r.record["model"].get("training")
        if r.kind != "checkpoint" or not training or not training.get("max_steps"):
            continue
        data = json.dumps({k: training.get(k) for k in DATA}, sort_keys=True, default=str)
        arm = "scratch" if training.get("init_from") in (None, "", "null") else "pretrained"
        arms.setdefault((r.board, _budget(training), data), {}).setdefault(arm, []).append(r)
    pairs = []
    for (board, _, _), found in arms.items():
        for scratch in found.get("scratch", []):
            pairs += [Pair(board, p, scratch) for p in found.get("pretrained", [])]
    return pairs


def intervals_apart(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    if not a or not b or None in (*a["ci95"], *b["ci95"]):
        return None
    return a["ci95"][1] < b["ci95"][0] or b["ci95"][1] < a["ci95"][0]


def gain(pretrained: dict[str, Any] | None, scratch: dict[str, Any] | None) -> float | None:
    """How much better the pretrained arm is, as a fraction of the scratch arm's value (positive: better)."""
    if not pretrained or not scratch or not scratch["value"] or pretrained["value"] is None:
        return None
    change = (scratch["value"] - pretrained["value"]) / abs(scratch["value"])
    return change if pretrained["better"] == "lower" else -change


def paired(pair: Pair, domain: str, metric: str) -> dict[str, Any] | None:
    """The gain (%, positive: pretrained better) with its paired bootstrap interval over the structures of
    ``domain`` both arms were scored on; None where a result keeps no per-structure errors for it."""
    column = PER_STRUCTURE.get(metric)
    arms = [
        ((r.record.get("per_structure") or {}).get(domain) or {}).get(column) if column else None
        for r in (pair.pretrained, pair.scratch)
    ]
    if not all(arms):
        return None
    pretrained, scratch = arms
    row_of = {key: i for i, key in enumerate(scratch["keys"])}
    common = [(i, row_of[key]) for i, key in enumerate(pretrained["keys"]) if key in row_of]
    if not common:
        return None
    mine, theirs = (list(rows) for rows in zip(*common, strict=True))
    return paired_gain(
        np.asarray(pretrained["sums"])[mine],
        np.asarray(pretrained["counts"])[mine],
        np.asarray(scratch["sums"])[theirs],
        np.asarray(scratch["counts"])[theirs],
    ).to_dict()


def paired_cells(gain_metric: dict[str, Any] | None) -> list[Cell]:
    if gain_metric is None or gain_metric["value"] is None:
        return [Cell(MISSING, csv=("", "")), Cell(MISSING)]
    low, high = gain_metric["ci95"]
    verdict = "pretrained ahead" if low > 0 else "scratch ahead" if high < 0 else "not shown"
    return [
        Cell(
            f"[{low:+.0f}%, {high:+.0f}%]",
            sort=low,
            note=f"n={gain_metric['n']}",
            hover=f"paired bootstrap over {gain_metric['n']} structures",
            csv=(repr(low), repr(high)),
        ),
        Cell(verdict, sort=verdict),
    ]


def pretraining_table(pairs: list[Pair]) -> Table | None:
    """One row per pair and domain: both arms' primary metric, the gain and whether the intervals are apart."""
    if not pairs:
        return None
    columns = [
        Column("domain", text=True),
        Column("metric", text=True),
        Column("pretrained", hint="95% interval"),
        Column("from scratch", hint="95% interval"),
        Column("gain", hint="% of scratch ↑"),
        Column("intervals", text=True),
        Column(
            "gain, paired", hint="95% interval", csv=("gain paired ci95 low (%)", "gain paired ci95 high (%)")
        ),
        Column("paired", text=True),
        Column("training structures", hint="per arm"),
        Column("steps"),
        Column("pretrained model", text=True),
        Column("scratch model", text=True),
        Column("board", text=True),
    ]
    rows = []
    for pair in sorted(pairs, key=lambda p: (board_title(p.board), p.training.get("train_structures") or 0)):
        metric = pair.scratch.primary_metric
        for domain in domains_of([pair.scratch]):
            if domain == ALL and len(domains_of([pair.scratch])) > 1:
                continue  # "all" mixes domains of different scales; the per-domain rows say more
            p = pair.pretrained.metrics.get(domain, {}).get(metric)
            s = pair.scratch.metrics.get(domain, {}).get(metric)
            g, apart = gain(p, s), intervals_apart(p, s)
            unit = (s or p or {}).get("unit", "")
            rows.append(
                [
                    Cell(domain, sort=domain),
                    Cell(f"{metric} ({unit})" if unit else metric, sort=metric),
                    metric_cell(p),
                    metric_cell(s),
                    Cell(MISSING if g is None else f"{100 * g:+.0f}%", sort=g),
                    Cell(
                        MISSING if apart is None else ("apart" if apart else "overlap"),
                        sort=None if apart is None else int(apart),
                    ),
                    *paired_cells(paired(pair, domain, metric)),
                    _number(pair.training.get("train_structures")),
                    _number(pair.training.get("max_steps")),
                    Cell(pair.pretrained.model, sort=pair.pretrained.model),
                    Cell(pair.scratch.model, sort=pair.scratch.model),
                    Cell(board_title(pair.board), sort=board_title(pair.board)),
                ]
            )
    return Table(anchor("pretraining"), "pretrained versus from scratch, equal budgets", columns, rows)


def learning_curves(pairs: list[Pair]) -> dict[tuple[Board, str], dict[str, list[tuple[int, dict | None]]]]:
    """Per (board, domain) with pairs at two or more training-set sizes: {arm: [(size, metric), ...]}."""
    grouped: dict[tuple[Board, str], list[Pair]] = {}
    for pair in pairs:
        grouped.setdefault(pair.curve_key, []).append(pair)
    curves: dict[tuple[Board, str], dict[str, list]] = {}
    for (board, _), members in grouped.items():
        sized = [m for m in members if m.training.get("train_structures")]
        if len({m.training["train_structures"] for m in sized}) < 2:
            continue
        sized.sort(key=lambda m: m.training["train_structures"])
        metric = sized[0].scratch.primary_metric
        for domain in domains_of([m.scratch for m in sized]):
            if domain == ALL:
                continue
            curves[(board, domain)] = {
                arm: [
                    (m.training["train_structures"], getattr(m, arm).metrics.get(domain, {}).get(metric))
                    for m in sized
                ]
                for arm in ("pretrained", "scratch")
            }
    return curves


def _number(x: Any) -> Cell:
    return Cell(MISSING, sort=None) if x is None else Cell(f"{x:,}", sort=x, csv=(str(x),))
