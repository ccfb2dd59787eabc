"""Metrics per slice of the metadata: batch, source and negative subtype."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from ladnn.data.release import read_release
from ladnn.evaluation.report import SLICE_COLUMNS, evaluate_slices


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "label": [1, 1, 0, 0, 1, 0, 1, 1],
            "batch_id": ["b1", "b1", "b1", "b1", "b2", "b2", "b3", "b3"],
            "source": ["s1", "s1", "s2", "s2", "s1", "s2", "s3", "s3"],
            "negative_subtype": [pd.NA, pd.NA, "healthy", "other", pd.NA, "healthy", pd.NA, pd.NA],
        }
    ).astype({"batch_id": "string", "source": "string", "negative_subtype": "string"})


PROBABILITIES = np.array([[0.9], [0.4], [0.2], [0.6], [0.8], [0.1], [0.7], [0.3]])


def _row(table: pd.DataFrame, column: str, value: str) -> pd.Series:
    match = table[(table["slice"] == column) & (table["value"] == value)]
    assert len(match) == 1, f"expected one row for {column}={value}, got {len(match)}"
    return match.iloc[0]


def test_single_class_slice_gives_nan_auc():
    with pytest.warns(UserWarning, match="single class"):
        table = evaluate_slices(_frame(), PROBABILITIES, 0.5)

    b3 = _row(table, "batch_id", "b3")
    assert math.isnan(b3["auc"])
    assert b3["positives"] == 2
    assert b3["negatives"] == 0
    assert b3["sensitivity"] == 0.5
    assert math.isnan(b3["specificity"])


def test_two_class_slice_metrics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = evaluate_slices(_frame(), PROBABILITIES, 0.5)

    b1 = _row(table, "batch_id", "b1")
    # b1: positives 0.9, 0.4 and negatives 0.2, 0.6; pairs ranked right: (.9>.2), (.9>.6), (.4>.2).
    assert b1["auc"] == pytest.approx(3 / 4)
    assert b1["sensitivity"] == pytest.approx(0.5)
    assert b1["specificity"] == pytest.approx(0.5)
    assert b1["accuracy"] == pytest.approx(0.5)


def test_slice_counts_add_up():
    frame = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = evaluate_slices(frame, PROBABILITIES, 0.5)

    overall = _row(table, "all", "all")
    assert overall["n"] == len(frame)
    assert overall["positives"] == int(frame["label"].sum())
    for column in SLICE_COLUMNS:
        rows = table[table["slice"] == column]
        assert rows["n"].sum() == len(frame), column
        assert rows["positives"].sum() == overall["positives"], column
        assert (rows["positives"] + rows["negatives"] == rows["n"]).all(), column


def test_missing_values_form_own_slice():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = evaluate_slices(_frame(), PROBABILITIES, 0.5)

    missing = _row(table, "negative_subtype", "(missing)")
    assert missing["n"] == 5
    assert set(table.loc[table["slice"] == "negative_subtype", "value"]) == {
        "(missing)",
        "healthy",
        "other",
    }


def test_no_warning_without_single_class_slice():
    frame = _frame().iloc[:4].assign(source="s", negative_subtype="x", batch_id="b")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = evaluate_slices(frame, PROBABILITIES[:4], 0.5)

    assert not table["auc"].isna().any()


def test_whole_split_single_class_does_not_crash():
    frame = _frame()
    frame["label"] = 1

    with pytest.warns(UserWarning, match="single class"):
        table = evaluate_slices(frame, PROBABILITIES, 0.5)

    assert table["auc"].isna().all()
    assert table["specificity"].isna().all()


def test_slices_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="do not match"):
        evaluate_slices(_frame(), PROBABILITIES[:3], 0.5)


def test_slices_on_release_metadata(release_dir):
    items = read_release(release_dir)
    frame = pd.DataFrame(
        {
            "label": [item.label for item in items],
            "batch_id": "covid-ct-release",
            "source": [item.source for item in items],
            "negative_subtype": [item.negative_subtype for item in items],
        }
    )
    probabilities = np.random.default_rng(0).uniform(0, 1, (len(frame), 6))

    with pytest.warns(UserWarning, match="single class"):
        table = evaluate_slices(frame, probabilities, 0.5)

    sources = table[table["slice"] == "source"]
    assert sources["n"].sum() == len(frame) == 746
    assert sources["positives"].sum() == 349
    # Every COVID source is one publication with COVID images only.
    covid_sources = sources[sources["value"] != "UCSD-AI4H/COVID-CT"]
    assert covid_sources["auc"].isna().all()
