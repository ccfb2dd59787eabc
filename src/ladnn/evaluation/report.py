"""Evaluate predicted probabilities on one split at a threshold frozen on validation."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ladnn.data.lesions import LESIONS
from ladnn.evaluation.calibration import expected_calibration_error
from ladnn.evaluation.metrics import (
    auc_with_ci,
    roc_auc,
    sensitivity_at_specificity,
    threshold_metric_intervals,
    threshold_metrics,
)

__all__ = ["EvaluationResult", "evaluate_probabilities", "evaluate_slices", "SLICE_COLUMNS"]

# Metadata columns whose values define the slices of `evaluate_slices`.
SLICE_COLUMNS = ("batch_id", "source", "negative_subtype")
# Slice value of the rows whose slice column is empty.
MISSING_VALUE = "(missing)"


@dataclass
class EvaluationResult:
    split: str
    n_images: int
    threshold: float
    metrics: dict[str, float] = field(default_factory=dict)

    def flat(self, prefix: str | None = None) -> dict[str, float]:
        """Metrics keyed `<prefix>_<name>` (prefix defaults to the split), for MLflow."""
        head = prefix or self.split
        return {f"{head}_{name}": value for name, value in self.metrics.items()}


def evaluate_probabilities(
    frame: pd.DataFrame,
    probabilities: np.ndarray,
    *,
    threshold: float,
    split: str,
    n_resamples: int = 1000,
    seed: int = 0,
) -> EvaluationResult:
    """Compute AUC and the threshold metrics with patient-bootstrap 95% intervals, and the ECE.

    `probabilities` has the COVID probability in column 0 and, for LA-DNN, the five lesion
    probabilities after it; lesion AUCs use only the rows whose lesion label is known.
    """
    y = frame["label"].to_numpy(dtype=int)
    p = probabilities[:, 0]
    patients = frame["patient_id"].astype(str).to_numpy()
    auc, low, high = auc_with_ci(y, p, patients, n_resamples=n_resamples, seed=seed)
    metrics = {"auc": auc, "auc_ci_low": low, "auc_ci_high": high}
    metrics.update(threshold_metrics(y, p, threshold))
    intervals = threshold_metric_intervals(
        y, p, threshold, patients, n_resamples=n_resamples, seed=seed
    )
    for name, (low, high) in intervals.items():
        metrics[f"{name}_ci_low"] = low
        metrics[f"{name}_ci_high"] = high
    metrics["sensitivity_at_90_specificity"] = sensitivity_at_specificity(y, p, 0.90)
    metrics["sensitivity_at_95_specificity"] = sensitivity_at_specificity(y, p, 0.95)
    metrics["ece"] = expected_calibration_error(y, p)

    if probabilities.shape[1] > 1:
        for index, lesion in enumerate(LESIONS, start=1):
            known = frame[lesion].notna().to_numpy()
            labels = frame.loc[known, lesion].to_numpy(dtype=int)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = roc_auc(labels, probabilities[known, index]) if known.any() else math.nan
            metrics[f"lesion_{lesion}_auc"] = value
    return EvaluationResult(split=split, n_images=len(frame), threshold=threshold, metrics=metrics)


def evaluate_slices(
    frame: pd.DataFrame,
    probabilities: np.ndarray,
    threshold: float,
    columns: tuple[str, ...] = SLICE_COLUMNS,
) -> pd.DataFrame:
    """Compute the COVID-19 metrics of every value of each slice column, after one row for all.

    Returns columns `slice` (the metadata column, or "all"), `value`, `n`, `positives`,
    `negatives`, `auc`, `sensitivity`, `specificity` and `accuracy`. Empty slice values form the
    slice "(missing)", so the `n` of one column's slices add up to the number of rows. AUC is NaN
    for a slice with one class, and one warning names such slices. Sensitivity is NaN for a slice
    without positives, and specificity for one without negatives.
    """
    if len(frame) != len(probabilities):
        raise ValueError(
            f"{len(frame)} metadata rows do not match {len(probabilities)} probability rows"
        )
    frame = frame.reset_index(drop=True)
    y = frame["label"].to_numpy(dtype=int)
    p = np.asarray(probabilities)[:, 0]
    rows = [_slice_metrics("all", "all", y, p, threshold)]
    for column in columns:
        values = frame[column].astype("string").fillna(MISSING_VALUE).to_numpy()
        for value in sorted(set(values)):
            members = values == value
            rows.append(_slice_metrics(column, value, y[members], p[members], threshold))

    table = pd.DataFrame(rows)
    single_class = table[(table["positives"] == 0) | (table["negatives"] == 0)]
    if len(single_class):
        examples = ", ".join(
            f"{row.slice}={row.value}" for row in single_class.head(3).itertuples(index=False)
        )
        warnings.warn(
            f"ROC AUC is undefined for {len(single_class)} slice(s) with a single class "
            f"(e.g. {examples}); reported as NaN",
            stacklevel=2,
        )
    return table


def _slice_metrics(
    column: str, value: str, y: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, object]:
    positives = int(y.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = roc_auc(y, p) if len(y) else math.nan
    counts = threshold_metrics(y, p, threshold) if len(y) else {}
    return {
        "slice": column,
        "value": value,
        "n": len(y),
        "positives": positives,
        "negatives": len(y) - positives,
        "auc": auc,
        "sensitivity": counts.get("sensitivity", math.nan),
        "specificity": counts.get("specificity", math.nan),
        "accuracy": counts.get("accuracy", math.nan),
    }
