"""DeLong's test for two correlated ROC AUCs on the same images (fast algorithm of Sun and Xu,
IEEE Signal Processing Letters 21(11), 2014)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["DelongResult", "delong_test"]


@dataclass(frozen=True)
class DelongResult:
    auc_a: float
    auc_b: float
    difference: float
    standard_error: float
    z: float
    p_value: float


def _structural_components(
    positives: np.ndarray, negatives: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Return the AUC and its placement values for positives (V10) and negatives (V01)."""
    m, n = len(positives), len(negatives)
    combined = rankdata(np.concatenate([positives, negatives]))
    ranks_positive = rankdata(positives)
    ranks_negative = rankdata(negatives)
    auc = (combined[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (combined[:m] - ranks_positive) / n
    v01 = 1.0 - (combined[m:] - ranks_negative) / m
    return float(auc), v10, v01


def delong_test(y_true, scores_a, scores_b) -> DelongResult:
    """Two-sided test that two models scoring the same images have equal ROC AUC.

    Identical scores give a standard error of 0 and a p-value of 1. Raises `ValueError` unless both
    classes are present.
    """
    y = np.asarray(y_true, dtype=int)
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if not (y.shape == a.shape == b.shape) or y.ndim != 1:
        raise ValueError(
            f"labels {y.shape} and both score arrays {a.shape}, {b.shape} must be equal 1-D"
        )
    positive, negative = y == 1, y == 0
    m, n = int(positive.sum()), int(negative.sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes among the labels")

    auc_a, v10_a, v01_a = _structural_components(a[positive], a[negative])
    auc_b, v10_b, v01_b = _structural_components(b[positive], b[negative])
    s10 = np.cov(np.vstack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    covariance = s10 / m + s01 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = auc_a - auc_b
    if variance <= 1e-15:
        return DelongResult(auc_a, auc_b, difference, 0.0, 0.0, 1.0)
    error = math.sqrt(variance)
    z = difference / error
    return DelongResult(auc_a, auc_b, difference, error, z, float(2 * norm.sf(abs(z))))
