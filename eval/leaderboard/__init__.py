"""atomfm leaderboard: the report of the result files ``atomfm eval`` writes (Markdown, a static site, PNGs)."""

from __future__ import annotations

from eval.leaderboard.report import build_report

__all__ = ["build_report"]
