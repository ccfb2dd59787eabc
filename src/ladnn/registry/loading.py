"""Load registered LA-DNN versions from their safetensors files and score dataset images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from ladnn.data.store import DatasetStore
from ladnn.models.ladnn import LADNN
from ladnn.tracking.pyfunc import load_logged_model
from ladnn.training.images import ImageCache
from ladnn.training.trainer import predict

__all__ = ["LoadedVersion", "load_version", "score_frame"]


@dataclass
class LoadedVersion:
    name: str
    version: str
    model: LADNN
    spec: dict
    tags: dict[str, str]

    @property
    def threshold(self) -> float:
        return float(self.spec["threshold"])


def load_version(client: MlflowClient, name: str, version: str | ModelVersion) -> LoadedVersion:
    """Download a registered version's artifacts and rebuild its network without unpickling code."""
    model_version = (
        version
        if isinstance(version, ModelVersion)
        else client.get_model_version(name, str(version))
    )
    model, spec = load_logged_model(f"models:/{name}/{model_version.version}")
    return LoadedVersion(name, str(model_version.version), model, spec, dict(model_version.tags))


def score_frame(
    loaded: LoadedVersion, store: DatasetStore, frame: pd.DataFrame, cache_dir: Path
) -> np.ndarray:
    """Probabilities (N, outputs) of a loaded version on the dataset rows of `frame`."""
    cache = ImageCache(store, cache_dir, int(loaded.spec["image_size"]))
    pixels = cache.get(frame["image_id"].tolist())
    return predict(
        loaded.model,
        pixels,
        tuple(loaded.spec["mean"]),
        tuple(loaded.spec["std"]),
        tta=bool(loaded.spec.get("tta", False)),
    )
