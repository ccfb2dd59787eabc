"""Classification metrics from probabilities, with patient-level bootstrap confidence intervals."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

__all__ = [
    "roc_auc",
    "sensitivity_at_specificity",
    "threshold_metrics",
    "choose_threshold",
    "bootstrap_ci",
    "auc_with_ci",
    "threshold_metric_intervals",
    "patient_resamples",
    "resample_weights",
    "weighted_auc",
    "weighted_threshold_metrics",
    "confidence_interval",
]

# Metrics of a frozen threshold that `threshold_metric_intervals` gives intervals for.
THRESHOLD_METRICS = ("sensitivity", "specificity", "precision", "f1", "accuracy")


def _as_arrays(y_true: Sequence, y_score: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(y_score, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(
            f"labels of shape {y.shape} and scores of shape {p.shape} must be equal 1-D"
        )
    return y, p


def roc_auc(y_true: Sequence, y_score: Sequence) -> float:
    """ROC AUC; warns and returns NaN when only one class is present."""
    y, p = _as_arrays(y_true, y_score)
    if len(np.unique(y)) < 2:
        warnings.warn("ROC AUC is undefined with a single class; returning NaN", stacklevel=2)
        return math.nan
    return float(roc_auc_score(y, p))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def threshold_metrics(y_true: Sequence, y_score: Sequence, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, precision, F1 and accuracy of `score >= threshold`."""
    y, p = _as_arrays(y_true, y_score)
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    sensitivity = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "accuracy": _ratio(tp + tn, len(y)),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def choose_threshold(
    y_true: Sequence, y_score: Sequence, rule: str = "youden", target_sensitivity: float = 0.9
) -> float:
    """Pick the decision threshold on validation data.

    "youden" maximises sensitivity + specificity. "sensitivity" takes the highest threshold whose
    sensitivity reaches `target_sensitivity`, an operating point chosen for screening.
    "fixed" returns 0.5.
    """
    if rule == "fixed":
        return 0.5
    if rule not in ("youden", "sensitivity"):
        raise ValueError(
            f"unknown threshold rule {rule!r}: expected 'youden', 'sensitivity' or 'fixed'"
        )
    y, p = _as_arrays(y_true, y_score)
    if len(np.unique(y)) < 2:
        warnings.warn("threshold undefined with a single class; using 0.5", stacklevel=2)
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))
    else:
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target sensitivity must be in (0, 1], not {target_sensitivity}")
        # Thresholds decrease along the curve, so the first point that reaches the target is
        # the highest threshold that does.
        best = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    return float(min(thresholds[best], 1.0))


def sensitivity_at_specificity(y_true: Sequence, y_score: Sequence, specificity: float) -> float:
    """Highest sensitivity reachable while specificity stays at or above `specificity`."""
    y, p = _as_arrays(y_true, y_score)
    if len(np.unique(y)) < 2:
        return math.nan
    # Intermediate points must stay: with tied scores the best allowed point can be one of them.
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    allowed = fpr <= (1 - specificity) + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _group_index(n_rows: int, groups: Sequence | None) -> tuple[int, np.ndarray]:
    """Return the number of groups and each row's group number (each row alone without groups)."""
    group_ids = np.asarray(groups) if groups is not None else np.arange(n_rows)
    if group_ids.shape != (n_rows,):
        raise ValueError(
            f"groups of shape {group_ids.shape} must have one entry per row ({n_rows})"
        )
    unique, inverse = np.unique(group_ids, return_inverse=True)
    return len(unique), inverse


def patient_resamples(
    n_rows: int, groups: Sequence | None, n_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield the row indices of `n_resamples` bootstrap samples.

    Each sample draws as many groups (patients) as there are, with replacement, and takes all rows
    of each. Without `groups`, each row is its own group."""
    n_groups, inverse = _group_index(n_rows, groups)
    members = [np.flatnonzero(inverse == g) for g in range(n_groups)]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield np.concatenate([members[g] for g in rng.integers(0, n_groups, n_groups)])


def resample_weights(
    n_rows: int, groups: Sequence | None, n_resamples: int, seed: int
) -> np.ndarray:
    """Return how often each row appears in each of `patient_resamples`' samples.

    Row `r` of the result contains each input row's count in sample `r`. The samples are the ones
    that `patient_resamples` yields for the same arguments."""
    n_groups, inverse = _group_index(n_rows, groups)
    rng = np.random.default_rng(seed)
    counts = np.empty((n_resamples, n_groups), dtype=np.int64)
    for sample in range(n_resamples):
        counts[sample] = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return counts[:, inverse]


def weighted_auc(y_true: Sequence, y_score: Sequence, weights: np.ndarray) -> np.ndarray:
    """Compute the ROC AUC of the rows repeated as often as each row of `weights` gives.

    Returns one value per row of `weights`, equal to `roc_auc_score` on the repeated rows (a tie
    counts one half), and NaN where a row of `weights` leaves a class out."""
    y, p = _as_arrays(y_true, y_score)
    order = np.argsort(p, kind="stable")
    sorted_scores, positive = p[order], y[order] == 1
    counts = np.atleast_2d(weights)[:, order].astype(float)
    # Rows with equal scores form one group. A positive beats every negative of a lower group
    # and ties with each negative of its own group, which counts one half.
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
    positives = np.add.reduceat(counts * positive, starts, axis=1)
    negatives = np.add.reduceat(counts * ~positive, starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    wins = np.sum(positives * (below + 0.5 * negatives), axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, math.nan)


def weighted_threshold_metrics(
    y_true: Sequence, y_score: Sequence, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Compute `threshold_metrics` of the rows repeated as often as each row of `weights` gives.

    Returns one array per metric with a value per row of `weights`, NaN where the metric is
    undefined."""
    y, p = _as_arrays(y_true, y_score)
    positive, called = y == 1, p >= threshold
    counts = np.atleast_2d(weights).astype(float)
    tp = counts @ (positive & called)
    fp = counts @ (~positive & called)
    fn = counts @ (positive & ~called)
    tn = counts @ (~positive & ~called)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / denominator, math.nan)

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
    }


def confidence_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the defined (not NaN) values."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(defined, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    statistic,
    y_true: Sequence,
    y_score: Sequence,
    groups: Sequence | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of `statistic(y, p)`, resampling whole groups (patients).

    Resamples in which the statistic is undefined (NaN, e.g. a single class) are skipped.
    """
    y, p = _as_arrays(y_true, y_score)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in patient_resamples(len(y), groups, n_resamples, seed):
            value = statistic(y[index], p[index])
            if not math.isnan(value):
                values.append(value)
    if not values:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def auc_with_ci(
    y_true: Sequence,
    y_score: Sequence,
    groups: Sequence | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """ROC AUC and its 95% bootstrap interval over patients.

    The interval equals `bootstrap_ci` with `roc_auc_score` as the statistic, computed for all
    resamples at once from their row counts."""
    auc = roc_auc(y_true, y_score)
    y, p = _as_arrays(y_true, y_score)
    weights = resample_weights(len(y), groups, n_resamples, seed)
    low, high = confidence_interval(weighted_auc(y, p, weights))
    return auc, low, high


def threshold_metric_intervals(
    y_true: Sequence,
    y_score: Sequence,
    threshold: float,
    groups: Sequence | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each `threshold_metrics` rate, resampling whole groups (patients).

    One pass over the resamples serves all five metrics; with the same `seed` each interval equals
    `bootstrap_ci` of that metric alone. A metric undefined in a resample (no positives, say) is
    left out of that resample.
    """
    y, p = _as_arrays(y_true, y_score)
    weights = resample_weights(len(y), groups, n_resamples, seed)
    values = weighted_threshold_metrics(y, p, threshold, weights)
    return {name: confidence_interval(values[name], confidence) for name in THRESHOLD_METRICS}
