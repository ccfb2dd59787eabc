"""Audit the COVID-CT release for perceptual-hash near-duplicates across patients or splits.

    python -m ladnn.validation.audit [RELEASE_DIR] [--max-distance 4] [--csv pairs.csv]

Every image is normalised as the importer does, hashed with `imagehash.phash` (64 bits), and every
pair within `--max-distance` bits is listed with its patients, splits and labels. Pairs of one
patient (slices of one series or crops of one figure) are counted but are no leakage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import imagehash
import pandas as pd

from ladnn.data.images import normalise_image
from ladnn.data.release import read_release
from ladnn.validation.near_duplicates import HASH_BITS, near_duplicate_pairs
from ladnn.workspace import default_datasets_dir

__all__ = ["SAME_PATIENT", "OTHER_PATIENT_SAME_SPLIT", "OTHER_SPLIT", "audit_release", "main"]

logger = logging.getLogger(__name__)

SAME_PATIENT = "same patient"
OTHER_PATIENT_SAME_SPLIT = "other patient, same split"
OTHER_SPLIT = "other split"


def _relation(first: pd.Series, second: pd.Series) -> str:
    if first["split"] != second["split"]:
        return OTHER_SPLIT
    if first["patient_id"] != second["patient_id"]:
        return OTHER_PATIENT_SAME_SPLIT
    return SAME_PATIENT


def audit_release(release_dir: Path, max_distance: int = 4) -> pd.DataFrame:
    """Return the release's image pairs within `max_distance` pHash bits, closest first.

    Columns: `first_file`, `second_file`, `distance`, `relation` (same patient, other patient in
    the same split, or other split), then patient, split and label of each image.
    """
    items = read_release(release_dir)
    records = []
    for item in items:
        normalised = normalise_image(item.read_bytes(), item.file_name)
        records.append(
            {
                "file_name": item.file_name,
                "patient_id": item.patient_id,
                "split": item.split,
                "label": item.label,
                "phash": str(imagehash.phash(normalised.image)),
            }
        )
    images = pd.DataFrame(records)
    pairs = near_duplicate_pairs(images["phash"], max_distance)
    rows = []
    for pair in pairs.itertuples(index=False):
        first, second = images.iloc[pair.first], images.iloc[pair.second]
        rows.append(
            {
                "first_file": first["file_name"],
                "second_file": second["file_name"],
                "distance": pair.distance,
                "relation": _relation(first, second),
                "first_patient": first["patient_id"],
                "second_patient": second["patient_id"],
                "first_split": first["split"],
                "second_split": second["split"],
                "first_label": first["label"],
                "second_label": second["label"],
            }
        )
    columns = [
        "first_file",
        "second_file",
        "distance",
        "relation",
        "first_patient",
        "second_patient",
        "first_split",
        "second_split",
        "first_label",
        "second_label",
    ]
    return pd.DataFrame(rows, columns=columns)


def format_audit(pairs: pd.DataFrame, n_images: int, max_distance: int) -> str:
    """Summarise the pairs: counts by relation and label agreement, then every cross-patient pair."""
    lines = [
        f"{len(pairs)} pair(s) of {n_images} images within {max_distance} of {HASH_BITS} pHash bits"
    ]
    for relation in (SAME_PATIENT, OTHER_PATIENT_SAME_SPLIT, OTHER_SPLIT):
        chosen = pairs[pairs["relation"] == relation]
        mixed = int((chosen["first_label"] != chosen["second_label"]).sum())
        lines.append(f"  {relation}: {len(chosen)} (of which {mixed} with different labels)")
    leaking = pairs[pairs["relation"] != SAME_PATIENT]
    for pair in leaking.itertuples(index=False):
        lines.append(
            f"  d={pair.distance}  {pair.first_file} ({pair.first_split}, {pair.first_patient}) ~ "
            f"{pair.second_file} ({pair.second_split}, {pair.second_patient})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ladnn.validation.audit", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "release",
        nargs="?",
        type=Path,
        help="COVID-CT release folder; default $LADNN_DATASETS/covid-ct or ../shared/datasets/covid-ct",
    )
    parser.add_argument(
        "--max-distance", type=int, default=4, help="largest Hamming distance in bits (default 4)"
    )
    parser.add_argument("--csv", type=Path, help="also write every pair to this CSV file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    release = args.release or default_datasets_dir() / "covid-ct"
    try:
        n_images = len(read_release(release))
        pairs = audit_release(release, args.max_distance)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_audit(pairs, n_images, args.max_distance))
    if args.csv is not None:
        pairs.to_csv(args.csv, index=False)
        print(f"pairs written to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
