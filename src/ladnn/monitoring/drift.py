"""Drift of a new batch against the training data: image statistics, and the champion's embeddings
and scores.

Each statistic is a two-sample Kolmogorov-Smirnov distance (scipy) between the batch and the
training split; the embedding shift is the cosine distance between the mean backbone features of
the two sets. Drift is reported when any distance passes its threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import ks_2samp

from ladnn.data.store import DatasetStore
from ladnn.registry.loading import LoadedVersion
from ladnn.training.images import ImageCache, to_model_input

__all__ = ["DriftReport", "measure_drift"]

logger = logging.getLogger(__name__)

# Size at which image statistics are computed; small, because only intensities are compared.
_STATS_SIZE = 128


@dataclass
class DriftReport:
    batch_id: str
    n_batch: int
    n_reference: int
    statistics: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)

    @property
    def detected(self) -> bool:
        return bool(self.drifted)

    def as_dict(self) -> dict:
        return asdict(self) | {"detected": self.detected}


def _intensity_stats(pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    values = pixels.float().flatten(1)
    return values.mean(1).numpy(), values.std(1).numpy()


@torch.no_grad()
def _embed(loaded: LoadedVersion, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features and COVID probabilities of the champion."""
    model = loaded.model.eval()
    features, scores = [], []
    for start in range(0, len(pixels), 64):
        batch = to_model_input(
            pixels[start : start + 64], tuple(loaded.spec["mean"]), tuple(loaded.spec["std"])
        )
        feature = model.backbone(batch)
        features.append(feature.numpy())
        scores.append(torch.sigmoid(model.covid_head(feature)).squeeze(1).numpy())
    return np.concatenate(features), np.concatenate(scores)


def measure_drift(
    store: DatasetStore,
    batch_id: str,
    cache_dir: Path,
    *,
    champion: LoadedVersion | None = None,
    ks_threshold: float = 0.3,
    embedding_threshold: float = 0.05,
) -> DriftReport:
    """Compare the images of `batch_id` with the training split of the other batches."""
    frame = store.read_metadata()
    batch = frame[frame["batch_id"] == batch_id]
    reference = frame[(frame["batch_id"] != batch_id) & (frame["split"] == "train")]
    report = DriftReport(batch_id=batch_id, n_batch=len(batch), n_reference=len(reference))
    if batch.empty or reference.empty:
        logger.info("no drift measured for %s: batch or reference is empty", batch_id)
        return report

    cache = ImageCache(store, cache_dir, _STATS_SIZE)
    batch_mean, batch_std = _intensity_stats(cache.get(batch["image_id"].tolist()))
    ref_mean, ref_std = _intensity_stats(cache.get(reference["image_id"].tolist()))
    pairs = {"intensity_mean": (batch_mean, ref_mean), "intensity_std": (batch_std, ref_std)}

    if champion is not None:
        size_cache = ImageCache(store, cache_dir, int(champion.spec["image_size"]))
        batch_features, batch_scores = _embed(champion, size_cache.get(batch["image_id"].tolist()))
        ref_features, ref_scores = _embed(champion, size_cache.get(reference["image_id"].tolist()))
        pairs["champion_score"] = (batch_scores, ref_scores)
        a, b = batch_features.mean(0), ref_features.mean(0)
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        report.statistics["embedding_cosine_distance"] = 1.0 - cosine
        report.thresholds["embedding_cosine_distance"] = embedding_threshold
        if 1.0 - cosine > embedding_threshold:
            report.drifted.append("embedding_cosine_distance")

    for name, (sample, ref) in pairs.items():
        result = ks_2samp(sample, ref)
        report.statistics[name] = float(result.statistic)
        report.p_values[name] = float(result.pvalue) if not math.isnan(result.pvalue) else math.nan
        report.thresholds[name] = ks_threshold
        if result.statistic > ks_threshold:
            report.drifted.append(name)
    label_share = float(batch["label"].mean())
    report.statistics["covid_share_batch"] = label_share
    report.statistics["covid_share_reference"] = float(reference["label"].mean())
    if report.detected:
        logger.warning("drift in batch %s: %s", batch_id, ", ".join(report.drifted))
    return report


def drift_table(report: DriftReport) -> pd.DataFrame:
    rows = [
        {
            "statistic": name,
            "value": value,
            "threshold": report.thresholds.get(name, math.nan),
            "p_value": report.p_values.get(name, math.nan),
            "drift": name in report.drifted,
        }
        for name, value in report.statistics.items()
    ]
    return pd.DataFrame(rows)
