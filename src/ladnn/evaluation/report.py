"""Evaluate predicted probabilities on one split at a threshold frozen on validation."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ladnn.data.lesions import LESIONS
from ladnn.evaluation.metrics import (
    auc_with_ci,
    roc_auc,
    sensitivity_at_specificity,
    threshold_metrics,
)

__all__ = ["EvaluationResult", "evaluate_probabilities"]


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
    """Compute AUC with a patient-bootstrap 95% interval and the threshold metrics.

    `probabilities` has the COVID probability in column 0 and, for LA-DNN, the five lesion
    probabilities after it; lesion AUCs use only the rows whose lesion label is known.
    """
    y = frame["label"].to_numpy(dtype=int)
    p = probabilities[:, 0]
    patients = frame["patient_id"].astype(str).to_numpy()
    auc, low, high = auc_with_ci(y, p, patients, n_resamples=n_resamples, seed=seed)
    metrics = {"auc": auc, "auc_ci_low": low, "auc_ci_high": high}
    metrics.update(threshold_metrics(y, p, threshold))
    metrics["sensitivity_at_90_specificity"] = sensitivity_at_specificity(y, p, 0.90)
    metrics["sensitivity_at_95_specificity"] = sensitivity_at_specificity(y, p, 0.95)

    if probabilities.shape[1] > 1:
        for index, lesion in enumerate(LESIONS, start=1):
            known = frame[lesion].notna().to_numpy()
            labels = frame.loc[known, lesion].to_numpy(dtype=int)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = roc_auc(labels, probabilities[known, index]) if known.any() else math.nan
            metrics[f"lesion_{lesion}_auc"] = value
    return EvaluationResult(split=split, n_images=len(frame), threshold=threshold, metrics=metrics)
