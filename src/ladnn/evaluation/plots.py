"""ROC, precision-recall and confusion-matrix figures saved as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

__all__ = ["save_evaluation_plots"]


def save_evaluation_plots(
    y_true: np.ndarray, y_score: np.ndarray, threshold: float, folder: Path, prefix: str
) -> list[Path]:
    """Write `<prefix>_roc.png`, `<prefix>_pr.png` and `<prefix>_confusion.png` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(y_true, y_score, ax=axis, name="COVID-19")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axis.set_title(f"ROC ({prefix})")
    paths.append(folder / f"{prefix}_roc.png")
    figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    PrecisionRecallDisplay.from_predictions(y_true, y_score, ax=axis, name="COVID-19")
    axis.set_title(f"Precision-recall ({prefix})")
    paths.append(folder / f"{prefix}_pr.png")
    figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        (y_score >= threshold).astype(int),
        labels=[0, 1],
        display_labels=["non-COVID", "COVID"],
        ax=axis,
        colorbar=False,
    )
    axis.set_title(f"Confusion at {threshold:.3f} ({prefix})")
    paths.append(folder / f"{prefix}_confusion.png")
    figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)
    return paths
