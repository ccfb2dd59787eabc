"""ROC, precision-recall, confusion-matrix and lesion pair-plot figures saved as PNG files.

The figures are built with matplotlib's `Figure` class and never through `pyplot`, whose global
figure registry is not safe across threads. A training run renders them in a thread while it
computes Grad-CAM++ overlays, and the dashboard renders in Streamlit's script threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

__all__ = ["save_evaluation_plots", "save_lesion_pair_plot"]


def save_evaluation_plots(
    y_true: np.ndarray, y_score: np.ndarray, threshold: float, folder: Path, prefix: str
) -> list[Path]:
    """Write `<prefix>_roc.png`, `<prefix>_pr.png` and `<prefix>_confusion.png` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.subplots()
    RocCurveDisplay.from_predictions(y_true, y_score, ax=axis, name="COVID-19")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axis.set_title(f"ROC ({prefix})")
    paths.append(folder / f"{prefix}_roc.png")
    figure.savefig(paths[-1], dpi=120, bbox_inches="tight")

    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.subplots()
    PrecisionRecallDisplay.from_predictions(y_true, y_score, ax=axis, name="COVID-19")
    axis.set_title(f"Precision-recall ({prefix})")
    paths.append(folder / f"{prefix}_pr.png")
    figure.savefig(paths[-1], dpi=120, bbox_inches="tight")

    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.subplots()
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
    return paths


def save_lesion_pair_plot(
    covid_labels: np.ndarray,
    lesion_probabilities: np.ndarray,
    lesion_names: Sequence[str],
    path: Path,
    *,
    title: str = "Lesion probabilities by COVID-19 label",
) -> Path:
    """Write a scatter matrix of the lesion probabilities, coloured by the COVID-19 label, as a PNG.

    Off-diagonal panels plot one lesion probability against another and diagonal panels show the
    histogram of one lesion probability per label, so the plot shows how far the auxiliary lesion
    outputs separate COVID-19 from other images.
    """
    labels = np.asarray(covid_labels, dtype=int)
    values = np.asarray(lesion_probabilities, dtype=float)
    count = len(lesion_names)
    if values.ndim != 2 or values.shape != (len(labels), count):
        raise ValueError(
            f"lesion probabilities of shape {values.shape} do not match {len(labels)} labels "
            f"and {count} lesions"
        )
    groups = [(0, "non-COVID", "tab:blue"), (1, "COVID", "tab:red")]
    bins = np.linspace(0.0, 1.0, 21)

    figure = Figure(figsize=(2.0 * count, 2.0 * count))
    axes = figure.subplots(count, count, squeeze=False)
    for row in range(count):
        for column in range(count):
            axis = axes[row][column]
            for label, name, colour in groups:
                members = labels == label
                if row == column:
                    axis.hist(
                        values[members, column], bins=bins, color=colour, alpha=0.5, label=name
                    )
                else:
                    axis.scatter(
                        values[members, column],
                        values[members, row],
                        s=6,
                        color=colour,
                        alpha=0.5,
                        label=name,
                    )
            axis.set_xlim(0, 1)
            if row != column:
                axis.set_ylim(0, 1)
            if row == count - 1:
                axis.set_xlabel(lesion_names[column])
            else:
                axis.set_xticklabels([])
            if column == 0:
                axis.set_ylabel(lesion_names[row])
            elif row != column:
                axis.set_yticklabels([])
    handles, names = axes[0][1 if count > 1 else 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper right", markerscale=3)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path
