"""Error metrics with their sample counts and bootstrap 95% confidence intervals.

Per-atom quantities (forces) are resampled by structure, not by atom: the atoms of one structure are not
independent samples, and resampling them would make the interval too narrow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 1000


@dataclass
class Metric:
    """One number of a result file: value, 95% interval, structures and items (atoms, components) it rests on."""

    value: float
    ci95: tuple[float, float]
    n: int  # structures (or groups, for per-group metrics)
    n_items: int
    unit: str
    better: str = "lower"  # "lower" | "higher"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        return out


def _resample(n: int, seed: int) -> np.ndarray:
    """[BOOTSTRAP_SAMPLES, n] counts: how often each of n samples is drawn in each bootstrap replicate."""
    return (
        np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_SAMPLES).astype(float)
    )


def ratio_metric(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    unit: str,
    scale: float = 1.0,
    root: bool = False,
    seed: int = 0,
    better: str = "lower",
) -> Metric:
    """Σ sums / Σ counts over structures (×scale; square-rooted for an RMSE), with a structure bootstrap.

    sums [S]: each structure's total of the per-item quantity (|error|, error², cosine); counts [S] its items.
    """
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    keep = counts > 0
    sums, counts = sums[keep], counts[keep]
    if len(sums) == 0:
        return Metric(float("nan"), (float("nan"), float("nan")), 0, 0, unit, better)

    def finish(x: np.ndarray) -> np.ndarray:
        return (np.sqrt(x) if root else x) * scale

    value = float(finish(sums.sum() / counts.sum()))
    weights = _resample(len(sums), seed)
    boot = finish((weights @ sums) / np.maximum(weights @ counts, 1e-300))
    low, high = np.percentile(boot, [2.5, 97.5])
    return Metric(value, (float(low), float(high)), int(len(sums)), int(counts.sum()), unit, better)


def mean_metric(values: np.ndarray, *, unit: str, seed: int = 0, better: str = "lower") -> Metric:
    """The mean of one value per structure (or group), with a bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return ratio_metric(values, np.ones_like(values), unit=unit, seed=seed, better=better)


def fraction_metric(hits: np.ndarray, *, seed: int = 0) -> Metric:
    """A fraction (as %) of structures for which ``hits`` is true, with a bootstrap interval."""
    hits = np.asarray(hits, dtype=np.float64)
    return ratio_metric(hits, np.ones_like(hits), unit="%", scale=100.0, seed=seed, better="higher")


def paired_gain(
    better_sums: np.ndarray,
    better_counts: np.ndarray,
    other_sums: np.ndarray,
    other_counts: np.ndarray,
    *,
    seed: int = 0,
) -> Metric:
    """1 − MAE_a / MAE_b (as %) of two models' errors on the same structures (row i of each: one structure),
    with a paired structure bootstrap: each replicate draws the same structures for both, so what the
    structures share (an easy or hard test set) cancels and the interval is that of the difference itself,
    narrower than two separate intervals. Positive: model a has the lower error."""
    a, ca, b, cb = (
        np.asarray(x, dtype=np.float64) for x in (better_sums, better_counts, other_sums, other_counts)
    )
    keep = (ca > 0) & (cb > 0)
    a, ca, b, cb = a[keep], ca[keep], b[keep], cb[keep]
    if len(a) == 0 or b.sum() == 0:
        return Metric(float("nan"), (float("nan"), float("nan")), 0, 0, "%", "higher")
    value = 100.0 * (1.0 - (a.sum() / ca.sum()) / (b.sum() / cb.sum()))
    weights = _resample(len(a), seed)
    ratio = ((weights @ a) / np.maximum(weights @ ca, 1e-300)) / np.maximum(
        (weights @ b) / np.maximum(weights @ cb, 1e-300), 1e-300
    )
    low, high = np.percentile(100.0 * (1.0 - ratio), [2.5, 97.5])
    return Metric(float(value), (float(low), float(high)), int(len(a)), int(ca.sum()), "%", "higher")
