"""Hashed patient-level split assignment."""

from __future__ import annotations

from collections import Counter

import pytest

from ladnn.data.schema import SPLITS
from ladnn.data.splits import SPLIT_FRACTIONS, assign_splits, split_for_patient


def test_split_deterministic():
    for index in range(200):
        patient_id = f"covid-ct:Patient {index}"
        assert split_for_patient(patient_id) == split_for_patient(patient_id), patient_id


@pytest.mark.parametrize(
    ("patient_id", "split"),
    [("patient-0", "train"), ("patient-1", "test"), ("patient-5", "val"), ("a", "test")],
)
def test_split_pinned_values(patient_id, split):
    """Changing the hash would move patients that already have a split."""
    assert split_for_patient(patient_id) == split


def test_split_values_valid():
    splits = {split_for_patient(f"patient-{index}") for index in range(500)}

    assert splits == set(SPLITS)


def test_split_fractions_configured():
    assert dict(SPLIT_FRACTIONS) == {"train": 0.60, "val": 0.15, "test": 0.25}


@pytest.mark.parametrize(("split", "expected"), [("train", 0.60), ("val", 0.15), ("test", 0.25)])
def test_split_fractions_observed(split, expected):
    """With 20000 ids the standard error of each fraction is below 0.004."""
    counts = Counter(split_for_patient(f"batch-7:patient-{index}") for index in range(20000))

    assert abs(counts[split] / 20000 - expected) < 0.01


def test_assign_splits_keeps_known():
    known_patient = next(
        f"known-{index}" for index in range(100) if split_for_patient(f"known-{index}") != "test"
    )

    splits = assign_splits([known_patient, "new-patient"], {known_patient: "test"})

    assert splits[0] == "test"
    assert splits[1] == split_for_patient("new-patient")


def test_assign_splits_empty_known():
    patients = [f"patient-{index}" for index in range(50)]

    assert assign_splits(patients, {}) == [split_for_patient(patient) for patient in patients]
