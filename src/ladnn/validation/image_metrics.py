"""Per-image quality metrics, measured while a batch is decoded and for the images already in the
dataset (the reference that leakage and distribution checks compare a batch against)."""

from __future__ import annotations

import logging
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from ladnn.data.images import NormalisedImage
from ladnn.data.lesions import LESIONS
from ladnn.data.store import DatasetStore, atomic_write_bytes

__all__ = [
    "NEAR_BLACK_LEVEL",
    "NEAR_WHITE_LEVEL",
    "METRIC_COLUMNS",
    "METADATA_COLUMNS",
    "TABLE_COLUMNS",
    "REFERENCE_COLUMNS",
    "REFERENCE_CACHE_NAME",
    "measure_pixels",
    "measure_decoded",
    "cache_reference_metrics",
    "measure_undecodable",
    "build_metrics_table",
    "load_reference_metrics",
]

logger = logging.getLogger(__name__)

# Grey levels (0-255) at or below which a pixel counts as near-black, at or above as near-white.
NEAR_BLACK_LEVEL = 5
NEAR_WHITE_LEVEL = 250

# Measured per input file. Size, channels, mode, format and bit depth describe the file as decoded,
# before EXIF orientation and mode conversion. Intensities and the perceptual hash describe the
# normalised RGB image.
METRIC_COLUMNS = (
    "decodes",
    "decode_error",
    "width",
    "height",
    "channels",
    "mode",
    "format",
    "bit_depth",
    "file_size_bytes",
    "intensity_mean",
    "intensity_std",
    "near_black_fraction",
    "near_white_fraction",
    "phash",
)

# The publisher's fields of the file, in the columns of `data/metadata.csv`.
METADATA_COLUMNS = (
    "image_id",
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

# `row` is the position of the file in the batch; `outcome` is what the importer found before
# validation: `candidate` (new to the dataset), `undecodable`, `already_present` or `duplicate`.
# `metadata_error` describes what is wrong with the publisher's label, lesions or subtype, if
# anything.
TABLE_COLUMNS = (
    "row",
    "file_name",
    "outcome",
    *METRIC_COLUMNS,
    *METADATA_COLUMNS,
    "metadata_error",
)

# Metrics of a dataset image, measured on its canonical PNG (so width and height are after EXIF
# orientation), with the metadata that leakage checks need.
REFERENCE_COLUMNS = (
    "image_id",
    "file_name",
    "patient_id",
    "split",
    "label",
    "width",
    "height",
    "intensity_mean",
    "intensity_std",
    "near_black_fraction",
    "near_white_fraction",
    "phash",
)
_PIXEL_COLUMNS = REFERENCE_COLUMNS[5:]

# File name of the reference metrics cache; change the version when a metric's definition changes.
REFERENCE_CACHE_NAME = "reference-metrics-v1.csv"

_FLOAT_COLUMNS = ("intensity_mean", "intensity_std", "near_black_fraction", "near_white_fraction")
_INT_COLUMNS = ("row", "width", "height", "channels", "bit_depth", "file_size_bytes", "label")
_STRING_COLUMNS = (
    "file_name",
    "outcome",
    "decode_error",
    "mode",
    "format",
    "phash",
    "image_id",
    "patient_id",
    "source",
    "negative_subtype",
    "batch_id",
    "collected_on",
    "caption",
    "split",
    "metadata_error",
)


def measure_pixels(image: Image.Image) -> dict[str, object]:
    """Measure size, grey intensity (0-255) and the 64-bit perceptual hash of a decoded image."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    return {
        "width": image.width,
        "height": image.height,
        "intensity_mean": float(grey.mean()),
        "intensity_std": float(grey.std()),
        "near_black_fraction": float((grey <= NEAR_BLACK_LEVEL).mean()),
        "near_white_fraction": float((grey >= NEAR_WHITE_LEVEL).mean()),
        "phash": str(imagehash.phash(image)),
    }


def measure_decoded(
    normalised: NormalisedImage, file_size_bytes: int, pixels: dict[str, object]
) -> dict[str, object]:
    """Metrics of a file that decoded: its original properties and, from `pixels` (the
    `measure_pixels` result of the normalised image), those of its normalised pixels."""
    return {
        **pixels,
        "decodes": True,
        "decode_error": None,
        "width": normalised.original_width or pixels["width"],
        "height": normalised.original_height or pixels["height"],
        "channels": normalised.original_channels or None,
        "mode": normalised.original_mode,
        "format": normalised.original_format,
        "bit_depth": normalised.original_bit_depth or None,
        "file_size_bytes": file_size_bytes,
    }


def measure_undecodable(error: str, file_size_bytes: int) -> dict[str, object]:
    """Metrics of a file that did not decode: the error and its size, every pixel metric missing."""
    return {
        "decodes": False,
        "decode_error": error,
        "file_size_bytes": file_size_bytes,
    }


def build_metrics_table(records: list[dict[str, object]]) -> pd.DataFrame:
    """Build the per-file table in `TABLE_COLUMNS` order with stable dtypes.

    Columns a record has beyond `TABLE_COLUMNS` are kept after the known ones, so the suite's
    batch-level check rejects them.
    """
    frame = pd.DataFrame.from_records(records)
    extra = [column for column in frame.columns if column not in TABLE_COLUMNS]
    frame = frame.reindex(columns=[*TABLE_COLUMNS, *extra])
    frame["decodes"] = frame["decodes"].astype("boolean")
    for column in _INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    for column in LESIONS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int8")
    for column in _STRING_COLUMNS:
        frame[column] = frame[column].astype("string")
    return frame.reset_index(drop=True)


def _read_cache(path: Path | None) -> pd.DataFrame:
    empty = pd.DataFrame(columns=["image_id", *_PIXEL_COLUMNS])
    if path is None or not path.is_file():
        return empty
    cached = pd.read_csv(path, dtype={"image_id": str, "phash": str})
    if list(cached.columns) != ["image_id", *_PIXEL_COLUMNS]:
        logger.warning("ignoring reference metrics cache %s: unexpected columns", path)
        return empty
    return cached


def cache_reference_metrics(cache_path: Path, measured: dict[str, dict[str, object]]) -> None:
    """Add `measure_pixels` results of dataset images (by image id) to the reference cache.

    The importer adds the images it commits, so the next import does not decode them again."""
    cached = _read_cache(cache_path)
    known = set(cached["image_id"])
    rows = [
        {"image_id": image_id, **{column: pixels[column] for column in _PIXEL_COLUMNS}}
        for image_id, pixels in measured.items()
        if image_id not in known
    ]
    if rows:
        frame = pd.DataFrame(rows) if cached.empty else pd.concat([cached, pd.DataFrame(rows)])
        _write_cache(cache_path, frame)


def _write_cache(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))


def load_reference_metrics(store: DatasetStore, cache_path: Path | None = None) -> pd.DataFrame:
    """Return `REFERENCE_COLUMNS` for every image of the dataset, one row per image.

    Metrics are measured on the canonical PNGs. They depend only on the pixels, so they are cached
    by image id in `cache_path` (a CSV) when one is given. Images missing from the cache are
    measured, and then the cache is rewritten.
    """
    metadata = store.read_metadata()
    identity = metadata.loc[:, ["image_id", "file_name", "patient_id", "split", "label"]]
    if metadata.empty:
        return pd.DataFrame(columns=list(REFERENCE_COLUMNS))

    cached = _read_cache(cache_path)
    known = set(cached["image_id"])
    missing = [image_id for image_id in metadata["image_id"] if image_id not in known]
    if missing:
        logger.info("measuring %d dataset image(s) for the validation reference", len(missing))
        measured = []
        for image_id in missing:
            with Image.open(store.image_path(image_id)) as image:
                image.load()
                measured.append({"image_id": image_id, **measure_pixels(image)})
        cached = pd.concat([cached, pd.DataFrame(measured)], ignore_index=True)
        if cache_path is not None:
            _write_cache(cache_path, cached)

    reference = identity.merge(cached, on="image_id", how="left", validate="one_to_one")
    return reference.loc[:, list(REFERENCE_COLUMNS)].reset_index(drop=True)
