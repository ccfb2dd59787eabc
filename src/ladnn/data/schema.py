"""Columns of `data/metadata.csv`, one row per canonical image."""

from __future__ import annotations

import pandas as pd

from ladnn.data.lesions import LESIONS

__all__ = ["COLUMNS", "SPLITS", "empty_metadata", "coerce_metadata"]

SPLITS = ("train", "val", "test")

COLUMNS = (
    "image_id",
    "file_name",
    "label",
    *LESIONS,
    "patient_id",
    "source",
    "negative_subtype",
    "batch_id",
    "collected_on",
    "caption",
    "split",
)

_STRING_COLUMNS = (
    "image_id",
    "file_name",
    "patient_id",
    "source",
    "negative_subtype",
    "batch_id",
    "collected_on",
    "caption",
    "split",
)


def coerce_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """Order the columns and give each its type: lesions as nullable integers (missing = unknown)."""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"metadata is missing column(s) {missing}")
    frame = frame.loc[:, list(COLUMNS)].copy()
    frame["label"] = frame["label"].astype("int64")
    for lesion in LESIONS:
        frame[lesion] = frame[lesion].astype("Int8")
    for column in _STRING_COLUMNS:
        frame[column] = frame[column].astype("string")
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True)


def empty_metadata() -> pd.DataFrame:
    return coerce_metadata(pd.DataFrame({column: [] for column in COLUMNS}))
