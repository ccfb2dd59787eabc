"""Score registered models for the dashboard: the frozen test images, curves and Grad-CAM++ maps.

Models are loaded with `ladnn.evaluation.registered.load_model` (safetensors weights, no pickled
code) and scored with `ladnn.registry.loading.score_frame`, as `ladnn compare` scores them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from ladnn.config import LadnnCfg
from ladnn.data.store import DatasetStore
from ladnn.evaluation.calibration import reliability_bins
from ladnn.evaluation.explain import explain_image, overlay_image
from ladnn.evaluation.metrics import threshold_metrics
from ladnn.evaluation.registered import LoadedModel, load_model
from ladnn.registry.loading import LoadedVersion, score_frame
from ladnn.registry.workflow import frozen_test_frame
from ladnn.workspace import Workspace

__all__ = [
    "load_registered",
    "test_frame_for",
    "score_test_frame",
    "roc_points",
    "pr_points",
    "confusion_frame",
    "calibration_frame",
    "ScoredModels",
    "explain_overlays",
    "EXPLAIN_LOCK",
]

# Grad-CAM++ registers hooks on the model, so two sessions must not explain with one model at once.
EXPLAIN_LOCK = threading.Lock()


def load_registered(cfg: LadnnCfg, workspace: Workspace, version: str | None) -> LoadedModel:
    """Load a registered version; None loads the champion, else the latest version."""
    return load_model(cfg, workspace, version=version)


def test_frame_for(
    store: DatasetStore, workspace: Workspace, models: list[LoadedModel]
) -> pd.DataFrame:
    """Select the frozen test images, which no listed model's training split contains."""
    return frozen_test_frame(
        store, workspace, [model.spec.get("dataset_version") for model in models]
    )


@dataclass
class ScoredModels:
    # The scored rows: image_id, label, patient_id, batch_id, negative_subtype, ...
    frame: pd.DataFrame
    # Probabilities (N, outputs) per model version.
    probabilities: dict[str, np.ndarray]
    thresholds: dict[str, float]

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=int)

    def covid(self, version: str) -> np.ndarray:
        return self.probabilities[version][:, 0]


def score_test_frame(
    name: str,
    models: dict[str, LoadedModel],
    store: DatasetStore,
    workspace: Workspace,
) -> ScoredModels:
    """Score every model (keyed by version) on the same frozen test images."""
    frame = test_frame_for(store, workspace, list(models.values()))
    probabilities = {
        version: score_frame(
            LoadedVersion(name, version, loaded.model, loaded.spec, {}),
            store,
            frame,
            workspace.cache_dir,
        )
        for version, loaded in models.items()
    }
    thresholds = {version: loaded.threshold for version, loaded in models.items()}
    return ScoredModels(frame, probabilities, thresholds)


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    if len(np.unique(y)) < 2:
        return pd.DataFrame(columns=["false positive rate", "true positive rate"])
    fpr, tpr, _ = roc_curve(y, p)
    return pd.DataFrame({"false positive rate": fpr, "true positive rate": tpr})


def pr_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    if y.sum() == 0:
        return pd.DataFrame(columns=["recall", "precision"])
    precision, recall, _ = precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall, "precision": precision})


def confusion_frame(y: np.ndarray, p: np.ndarray, threshold: float) -> pd.DataFrame:
    """Count outcomes at `threshold`, with the true class as rows and the prediction as columns."""
    metrics = threshold_metrics(y, p, threshold)
    return pd.DataFrame(
        {
            "predicted negative": [metrics["tn"], metrics["fn"]],
            "predicted COVID": [metrics["fp"], metrics["tp"]],
        },
        index=["true negative", "true COVID"],
    )


def calibration_frame(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Return the non-empty reliability bins (mean predicted probability, observed COVID rate)."""
    bins = reliability_bins(y, p, n_bins=n_bins)
    return bins[bins["count"] > 0].reset_index(drop=True)


def explain_overlays(
    loaded: LoadedModel, image: bytes, name: str, outputs: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """Compute Grad-CAM++ overlays (RGB uint8) of the model's outputs for one encoded image.

    Raises `ImageDecodeError` (a ValueError) naming `name` when the bytes are not an image.
    """
    with EXPLAIN_LOCK:
        explanation = explain_image(
            loaded.model,
            loaded.backbone_spec,
            image,
            image_size=int(loaded.spec["image_size"]),
            name=name,
        )
    chosen = outputs or tuple(explanation.heatmaps)
    return {output: overlay_image(explanation, output) for output in chosen}
