"""Perceptual-hash near-duplicates: Hamming distances between 64-bit pHashes, near-duplicate pairs
within one table, and the leakage columns that flag batch images matching a dataset image of
another patient or split."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = [
    "HASH_BITS",
    "phash_values",
    "hamming_distances",
    "near_duplicate_pairs",
    "describe_match",
    "leakage_columns",
    "batch_near_duplicate_column",
]

HASH_BITS = 64
# Rows of the first operand per block, so a block of distances stays near 8 MB for 1000 columns.
_BLOCK_ROWS = 1024
# At most this many matches are named in one cell; the cell gives the total count as well.
_MAX_NAMED_MATCHES = 3


def phash_values(hashes: Iterable[str]) -> np.ndarray:
    """Convert 16-digit hex pHashes (as `str(imagehash.phash(...))` writes them) to uint64."""
    return np.array([int(text, 16) for text in hashes], dtype=np.uint64)


def hamming_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Return the matrix of bit differences between every hash of `first` and every of `second`."""
    result = np.empty((len(first), len(second)), dtype=np.uint8)
    for start in range(0, len(first), _BLOCK_ROWS):
        block = first[start : start + _BLOCK_ROWS, None] ^ second[None, :]
        result[start : start + _BLOCK_ROWS] = np.bitwise_count(block)
    return result


def near_duplicate_pairs(hashes: pd.Series, max_distance: int) -> pd.DataFrame:
    """Return pairs of positions (`first` < `second`) in `hashes` within `max_distance` bits.

    Missing hashes (images that did not decode) take part in no pair. Columns: `first`, `second`,
    `distance`, sorted by distance, then position.
    """
    present = np.flatnonzero(hashes.notna().to_numpy())
    values = phash_values(hashes.iloc[present])
    distances = hamming_distances(values, values)
    first, second = np.nonzero(np.triu(distances <= max_distance, k=1))
    pairs = pd.DataFrame(
        {
            "first": present[first],
            "second": present[second],
            "distance": distances[first, second].astype(int),
        }
    )
    return pairs.sort_values(["distance", "first", "second"], kind="stable").reset_index(drop=True)


def describe_match(file_name: str, patient_id: str, split: str, distance: int | None) -> str:
    """Name a matching image with its patient and split, and the distance for a near-duplicate."""
    text = f"{file_name} (patient {patient_id}, split {split}"
    if distance is not None:
        text += f", pHash distance {distance} of {HASH_BITS} bits"
    return text + ")"


def _join_matches(descriptions: list[str]) -> str | None:
    if not descriptions:
        return None
    named = "; ".join(descriptions[:_MAX_NAMED_MATCHES])
    if len(descriptions) > _MAX_NAMED_MATCHES:
        named += f"; and {len(descriptions) - _MAX_NAMED_MATCHES} more"
    return named


def _differs(batch_row: pd.Series, other: pd.Series) -> bool:
    return batch_row["patient_id"] != other["patient_id"] or batch_row["split"] != other["split"]


def leakage_columns(
    batch: pd.DataFrame, reference: pd.DataFrame, max_distance: int
) -> pd.DataFrame:
    """Flag batch rows whose image matches a dataset image of another patient or another split.

    `batch` needs `image_id`, `phash`, `patient_id` and `split`; `reference` needs those and
    `file_name`. Returns, on `batch`'s index, `exact_match_of` (same content id) and
    `near_duplicate_of` (another content id within `max_distance` pHash bits): a description of
    the matching dataset images, or missing when there is none.
    """
    exact: list[str | None] = [None] * len(batch)
    near: list[str | None] = [None] * len(batch)
    hashed = batch["phash"].notna().to_numpy()
    if reference.empty or not hashed.any():
        return pd.DataFrame(
            {"exact_match_of": exact, "near_duplicate_of": near}, index=batch.index, dtype="string"
        )

    reference = reference.reset_index(drop=True)
    by_image_id = reference.groupby("image_id").indices
    positions = np.flatnonzero(hashed)
    distances = hamming_distances(
        phash_values(batch["phash"].iloc[positions]), phash_values(reference["phash"])
    )
    for block_row, position in enumerate(positions):
        row = batch.iloc[position]
        exact_matches = [
            reference.iloc[index]
            for index in by_image_id.get(row["image_id"], [])
            if _differs(row, reference.iloc[index])
        ]
        exact[position] = _join_matches(
            [
                describe_match(m["file_name"], m["patient_id"], m["split"], None)
                for m in exact_matches
            ]
        )
        close = np.flatnonzero(distances[block_row] <= max_distance)
        close = close[np.argsort(distances[block_row, close], kind="stable")]
        near_matches = []
        for index in close:
            other = reference.iloc[index]
            if other["image_id"] != row["image_id"] and _differs(row, other):
                near_matches.append(
                    describe_match(
                        other["file_name"],
                        other["patient_id"],
                        other["split"],
                        int(distances[block_row, index]),
                    )
                )
        near[position] = _join_matches(near_matches)
    return pd.DataFrame(
        {"exact_match_of": exact, "near_duplicate_of": near}, index=batch.index, dtype="string"
    )


def batch_near_duplicate_column(batch: pd.DataFrame, max_distance: int) -> pd.Series:
    """Describe, for each batch row, the other batch rows of another patient or split within
    `max_distance` pHash bits; missing where there is none."""
    frame = batch.reset_index(drop=True)
    matches: dict[int, list[str]] = {}
    for pair in near_duplicate_pairs(frame["phash"], max_distance).itertuples(index=False):
        first, second = frame.iloc[pair.first], frame.iloc[pair.second]
        if not _differs(first, second):
            continue
        matches.setdefault(pair.first, []).append(
            describe_match(
                second["file_name"], second["patient_id"], second["split"], pair.distance
            )
        )
        matches.setdefault(pair.second, []).append(
            describe_match(first["file_name"], first["patient_id"], first["split"], pair.distance)
        )
    values = [_join_matches(matches.get(position, [])) for position in range(len(frame))]
    return pd.Series(values, index=batch.index, dtype="string")
