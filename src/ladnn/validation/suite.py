"""The Great Expectations suites of the data-validation gate, kept as code.

Three suites run over the batch table (one row per input file: metrics, metadata and the derived
columns of `ladnn.validation.gate`):

- `row-level` (blocking): a row that fails any of these is rejected and quarantined with the
  reason; the rest of the batch goes on;
- `batch-level` (blocking): a failure stops the whole batch, and nothing is committed;
- `warnings` (severity `warning`): distribution and soft checks, reported and never blocking.

Each check is a GX expectation type with its arguments, a name stored in the expectation's `meta`
and, for row-level checks, a function that words the reason for one failing row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from ladnn.data.lesions import LESIONS
from ladnn.validation.image_metrics import NEAR_BLACK_LEVEL, NEAR_WHITE_LEVEL, TABLE_COLUMNS

__all__ = [
    "ROW_LEVEL",
    "BATCH_LEVEL",
    "WARNING",
    "DERIVED_COLUMNS",
    "REQUIRED_COLUMNS",
    "ValidationSettings",
    "Check",
    "row_checks",
    "batch_checks",
    "warning_checks",
]

ROW_LEVEL = "row-level"
BATCH_LEVEL = "batch-level"
WARNING = "warnings"

# Columns the gate adds in pandas for rules GX cannot express on one column.
DERIVED_COLUMNS = (
    "positive_lesions",
    "exact_match_of",
    "near_duplicate_of",
    "batch_near_duplicate_of",
    "rejected",
)
REQUIRED_COLUMNS = (
    "row",
    "file_name",
    "decodes",
    "width",
    "height",
    "intensity_std",
    "phash",
    "image_id",
    "label",
    *LESIONS,
    "patient_id",
    "source",
    "split",
)


@dataclass(frozen=True)
class ValidationSettings:
    """Thresholds of the gate. Sizes are in pixels, intensities in grey levels 0-255."""

    # The smallest image of the COVID-CT release is 53x26 px, so the blocking bound stays below 26;
    # images under `warn_min_side` (7 in the release) get a warning instead.
    min_side: int = 24
    max_side: int = 4096
    warn_min_side: int = 64
    # A uniform image has a grey-level standard deviation of 0; the release's lowest is 34.5.
    min_intensity_std: float = 2.0
    max_near_black_fraction: float = 0.99
    max_near_white_fraction: float = 0.99
    # Hamming distance (of 64 bits) at or under which two pHashes count as near-duplicates.
    near_duplicate_distance: int = 4
    # A batch with a larger fraction of rejected rows is stopped as a whole.
    max_rejected_fraction: float = 0.5
    # Distribution warnings: the batch mean must lie within the dataset mean +- k per-image stds.
    distribution_k_std: float = 2.0
    # Class balance warning: the batch's COVID fraction must lie within this of the dataset's.
    class_balance_tolerance: float = 0.25
    build_docs: bool = True


@dataclass(frozen=True)
class Check:
    """One expectation of a suite: its GX class name and arguments, and how to word a failure."""

    name: str
    level: str
    expectation_type: str
    kwargs: dict[str, object]
    description: str
    # The reason of one failing row, from that row of the validated table (row-level only).
    reason: Callable[[pd.Series], str] | None = field(default=None, compare=False)


def _between(name: str, column: str, low: float | None, high: float | None, text: str) -> Check:
    """Build a row-level range check on one column. Missing values (undecodable files) pass."""
    kwargs: dict[str, object] = {"column": column}
    if low is not None:
        kwargs["min_value"] = low
    if high is not None:
        kwargs["max_value"] = high
    if low is not None and high is not None:
        bounds = f"{low}-{high}"
    else:
        bounds = f">= {low}" if low is not None else f"<= {high}"

    def reason(row: pd.Series) -> str:
        value = row[column]
        formatted = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"{column} {formatted} is outside {bounds}"

    return Check(name, ROW_LEVEL, "ExpectColumnValuesToBeBetween", kwargs, text, reason)


def row_checks(settings: ValidationSettings) -> list[Check]:
    """Return the blocking row-level checks; a row failing one of them is rejected."""
    low, high = settings.min_side, settings.max_side
    checks = [
        Check(
            "decodes",
            ROW_LEVEL,
            "ExpectColumnValuesToBeInSet",
            {"column": "decodes", "value_set": [True]},
            "Every file decodes as an image.",
            lambda row: str(row["decode_error"]),
        ),
        _between("width_in_range", "width", low, high, f"Width is {low}-{high} px."),
        _between("height_in_range", "height", low, high, f"Height is {low}-{high} px."),
        _between(
            "not_blank",
            "intensity_std",
            settings.min_intensity_std,
            None,
            f"Grey-level standard deviation is at least {settings.min_intensity_std}.",
        ),
        _between(
            "not_mostly_black",
            "near_black_fraction",
            None,
            settings.max_near_black_fraction,
            f"At most {settings.max_near_black_fraction:.0%} of pixels are near-black "
            f"(grey <= {NEAR_BLACK_LEVEL}).",
        ),
        _between(
            "not_mostly_white",
            "near_white_fraction",
            None,
            settings.max_near_white_fraction,
            f"At most {settings.max_near_white_fraction:.0%} of pixels are near-white "
            f"(grey >= {NEAR_WHITE_LEVEL}).",
        ),
        Check(
            "metadata_valid",
            ROW_LEVEL,
            "ExpectColumnValuesToBeNull",
            {"column": "metadata_error"},
            "The publisher's label, lesion names and values and negative subtype are valid.",
            lambda row: str(row["metadata_error"]),
        ),
        Check(
            "label_present",
            ROW_LEVEL,
            "ExpectColumnValuesToNotBeNull",
            {"column": "label"},
            "Every row has a label 0 or 1.",
            lambda row: "label is missing or invalid",
        ),
        Check(
            "label_in_set",
            ROW_LEVEL,
            "ExpectColumnValuesToBeInSet",
            {"column": "label", "value_set": [0, 1]},
            "Labels are 0 (negative) or 1 (COVID-19).",
            lambda row: f"label {row['label']} is not 0 or 1",
        ),
    ]
    for lesion in LESIONS:
        checks.append(
            Check(
                f"lesion_in_set:{lesion}",
                ROW_LEVEL,
                "ExpectColumnValuesToBeInSet",
                {"column": lesion, "value_set": [0, 1]},
                f"Lesion {lesion} is 1, 0 or missing (unknown).",
                lambda row, lesion=lesion: (
                    f"lesion {lesion} is {row[lesion]}, expected 1, 0 or missing"
                ),
            )
        )
    checks += [
        Check(
            "negative_without_lesion",
            ROW_LEVEL,
            "ExpectColumnValuesToBeNull",
            {
                "column": "positive_lesions",
                "row_condition": "label == 0",
                "condition_parser": "pandas",
            },
            "A negative image (label 0) marks no lesion as present.",
            lambda row: (
                f"negative image (label 0) marks lesion(s) {row['positive_lesions']} present"
            ),
        ),
        Check(
            "patient_id_present",
            ROW_LEVEL,
            "ExpectColumnValuesToNotBeNull",
            {"column": "patient_id"},
            "Every row names its patient.",
            lambda row: "patient_id is missing or empty",
        ),
        Check(
            "source_present",
            ROW_LEVEL,
            "ExpectColumnValuesToNotBeNull",
            {"column": "source"},
            "Every row names its source.",
            lambda row: "source is missing or empty",
        ),
        Check(
            "collected_on_is_date",
            ROW_LEVEL,
            "ExpectColumnValuesToMatchStrftimeFormat",
            {"column": "collected_on", "strftime_format": "%Y-%m-%d"},
            "collected_on is a date YYYY-MM-DD when given.",
            lambda row: f"collected_on {row['collected_on']!r} is not a date YYYY-MM-DD",
        ),
        Check(
            "no_exact_leak",
            ROW_LEVEL,
            "ExpectColumnValuesToBeNull",
            {"column": "exact_match_of"},
            "No image has the pixels of a dataset image of another patient or split.",
            lambda row: (
                f"{row['file_name']} has the same pixels as dataset image {row['exact_match_of']}"
            ),
        ),
        Check(
            "no_near_duplicate_leak",
            ROW_LEVEL,
            "ExpectColumnValuesToBeNull",
            {"column": "near_duplicate_of"},
            f"No image is within {settings.near_duplicate_distance} pHash bits of a dataset image "
            "of another patient or split.",
            lambda row: (
                f"{row['file_name']} is a near-duplicate of dataset image "
                f"{row['near_duplicate_of']}"
            ),
        ),
    ]
    return checks


def batch_checks(settings: ValidationSettings) -> list[Check]:
    """Return the blocking batch-level checks; they run after the row-level ones, over a table with
    a boolean `rejected` column."""
    known = [*TABLE_COLUMNS, *DERIVED_COLUMNS]
    return [
        Check(
            "required_columns_present",
            BATCH_LEVEL,
            "ExpectTableColumnsToMatchSet",
            {"column_set": list(REQUIRED_COLUMNS), "exact_match": False},
            "The table has every required column.",
        ),
        Check(
            "no_unknown_columns",
            BATCH_LEVEL,
            "ExpectTableColumnsToMatchSet",
            {"column_set": known, "exact_match": True},
            "The table has no column beyond the schema.",
        ),
        Check(
            "rejected_fraction",
            BATCH_LEVEL,
            "ExpectColumnValuesToBeInSet",
            {
                "column": "rejected",
                "value_set": [False],
                "mostly": 1 - settings.max_rejected_fraction,
            },
            f"At most {settings.max_rejected_fraction:.0%} of the validated rows are rejected.",
        ),
    ]


def _mean_band(values: pd.Series, k: float) -> tuple[float, float]:
    """Return mean +- k population std of `values`, the lower bound no less than 0, because every
    metric checked this way (intensity, size) is non-negative."""
    mean, std = float(values.mean()), float(values.std(ddof=0))
    return max(0.0, mean - k * std), mean + k * std


def warning_checks(
    settings: ValidationSettings, reference: pd.DataFrame, batch: pd.DataFrame
) -> list[Check]:
    """Return the non-blocking checks. Distribution checks compare the batch with `reference` (the
    dataset's image metrics) and are left out when either has no decoded image."""
    small = settings.warn_min_side
    checks = [
        Check(
            "small_width",
            WARNING,
            "ExpectColumnValuesToBeBetween",
            {"column": "width", "min_value": small},
            f"Width is at least {small} px.",
        ),
        Check(
            "small_height",
            WARNING,
            "ExpectColumnValuesToBeBetween",
            {"column": "height", "min_value": small},
            f"Height is at least {small} px.",
        ),
        Check(
            "batch_near_duplicates",
            WARNING,
            "ExpectColumnValuesToBeNull",
            {"column": "batch_near_duplicate_of"},
            f"No two batch images of different patients or splits are within "
            f"{settings.near_duplicate_distance} pHash bits.",
        ),
    ]
    decoded = batch[batch["decodes"].fillna(False).astype(bool)]
    if reference.empty or decoded.empty:
        return checks

    k = settings.distribution_k_std
    for column in ("intensity_mean", "intensity_std", "width", "height"):
        low, high = _mean_band(reference[column].astype(float), k)
        checks.append(
            Check(
                f"distribution:{column}",
                WARNING,
                "ExpectColumnMeanToBeBetween",
                {"column": column, "min_value": low, "max_value": high},
                f"The batch mean of {column} is within the dataset mean +- {k:g} std "
                f"({low:.1f} to {high:.1f}).",
            )
        )
    covid_fraction = float((reference["label"] == 1).mean())
    tolerance = settings.class_balance_tolerance
    low, high = max(0.0, covid_fraction - tolerance), min(1.0, covid_fraction + tolerance)
    checks.append(
        Check(
            "class_balance",
            WARNING,
            "ExpectColumnMeanToBeBetween",
            {"column": "label", "min_value": low, "max_value": high},
            f"The batch's COVID fraction is within {tolerance:g} of the dataset's "
            f"({covid_fraction:.3f}): {low:.3f} to {high:.3f}.",
        )
    )
    return checks
