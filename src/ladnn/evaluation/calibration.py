"""Calibration of the COVID-19 probability: expected calibration error and reliability diagrams.

Both use equal-width probability bins with the edges of `np.linspace(0, 1, n_bins + 1)`, closed on
the right as in `sklearn.calibration.calibration_curve` (scikit-learn 1.9, strategy "uniform"):
bin k contains the probabilities in (edge k, edge k + 1], and the first bin also contains 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ladnn.evaluation.metrics import _as_arrays  # noqa: E402

__all__ = ["reliability_bins", "expected_calibration_error", "save_reliability_diagram"]


def reliability_bins(y_true: Sequence, y_score: Sequence, n_bins: int = 10) -> pd.DataFrame:
    """Compute the count, mean probability and fraction of positives of each probability bin.

    Returns one row per bin, empty bins included (their mean probability and fraction positive
    are NaN).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _as_arrays(y_true, y_score)
    if len(p) and (np.nanmin(p) < 0 or np.nanmax(p) > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], p, side="left")
    counts = np.bincount(index, minlength=n_bins)
    probability_sums = np.bincount(index, weights=p, minlength=n_bins)
    positive_sums = np.bincount(index, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.where(counts > 0, probability_sums / counts, np.nan)
        fraction_positive = np.where(counts > 0, positive_sums / counts, np.nan)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": counts.astype(int),
            "mean_probability": mean_probability,
            "fraction_positive": fraction_positive,
        }
    )


def expected_calibration_error(y_true: Sequence, y_score: Sequence, n_bins: int = 10) -> float:
    """Compute the ECE of the positive-class probability over equal-width bins.

    ECE = sum over non-empty bins b of (n_b / N) * |fraction of positives in b - mean probability
    in b|. Returns NaN for no samples.
    """
    bins = reliability_bins(y_true, y_score, n_bins)
    total = int(bins["count"].sum())
    if total == 0:
        return math.nan
    filled = bins[bins["count"] > 0]
    gaps = (filled["fraction_positive"] - filled["mean_probability"]).abs()
    return float((filled["count"] / total * gaps).sum())


def save_reliability_diagram(
    y_true: Sequence,
    y_score: Sequence,
    path: Path,
    *,
    n_bins: int = 10,
    title: str = "Reliability diagram",
) -> Path:
    """Write a reliability diagram with a histogram of the probabilities below it as a PNG."""
    bins = reliability_bins(y_true, y_score, n_bins)
    ece = expected_calibration_error(y_true, y_score, n_bins)
    centres = (bins["bin_low"] + bins["bin_high"]) / 2
    width = 1.0 / n_bins
    filled = bins["count"] > 0

    figure = Figure(figsize=(4.5, 5.5))
    curve, histogram = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    curve.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    curve.bar(
        centres[filled],
        bins.loc[filled, "fraction_positive"],
        width=width,
        edgecolor="black",
        alpha=0.6,
        label="fraction positive per bin",
    )
    curve.plot(
        bins.loc[filled, "mean_probability"],
        bins.loc[filled, "fraction_positive"],
        marker="o",
        color="tab:red",
        label="at the bin's mean probability",
    )
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1)
    curve.set_ylabel("Fraction of COVID-19 images")
    curve.set_title(f"{title} (ECE {ece:.3f}, {n_bins} bins)")
    curve.legend(loc="upper left", fontsize="small")

    histogram.bar(centres, bins["count"], width=width, edgecolor="black", color="tab:blue")
    histogram.set_xlabel("Predicted COVID-19 probability")
    histogram.set_ylabel("Images")

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
