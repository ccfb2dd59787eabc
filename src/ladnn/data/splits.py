"""Patient-level split assignment that never changes once made."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["SPLIT_FRACTIONS", "split_for_patient", "assign_splits"]

# Fractions for new patients: train, validation, test.
SPLIT_FRACTIONS = (("train", 0.60), ("val", 0.15), ("test", 0.25))


def split_for_patient(patient_id: str) -> str:
    """Map a patient id to a split through a SHA-256 of the id, uniform on [0, 1)."""
    digest = hashlib.sha256(patient_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in SPLIT_FRACTIONS:
        cumulative += fraction
        if position < cumulative:
            return split
    return SPLIT_FRACTIONS[-1][0]


def assign_splits(patients: list[str], known: Mapping[str, str]) -> list[str]:
    """Return the split of each patient: its known split if it has one, else its hashed split."""
    return [known.get(patient) or split_for_patient(patient) for patient in patients]
