"""Turn a batch of source images with their labels into canonical rows of the dataset."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ladnn.data.images import ImageDecodeError, encode_png, normalise_image
from ladnn.data.lesions import LESIONS
from ladnn.data.schema import SPLITS, coerce_metadata
from ladnn.data.splits import split_for_patient
from ladnn.data.store import DatasetStore, atomic_write_bytes

__all__ = ["ImportItem", "ImportReport", "import_items"]

logger = logging.getLogger(__name__)


@dataclass
class ImportItem:
    """One source image and everything its publisher says about it."""

    file_name: str
    read_bytes: Callable[[], bytes]
    label: int
    patient_id: str
    source: str
    # Lesion code to 1 or 0; a lesion missing from the mapping is unknown.
    lesions: dict[str, int] = field(default_factory=dict)
    negative_subtype: str | None = None
    collected_on: str | None = None
    caption: str | None = None
    # A split fixed by the publisher; None assigns one from the patient.
    split: str | None = None


@dataclass
class ImportReport:
    batch_id: str
    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    # (file name, file name of the image already in the dataset or batch with the same pixels)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    # (file name, reason)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added)

    def summary(self) -> str:
        return (
            f"batch {self.batch_id}: {len(self.added)} added, {len(self.already_present)} already "
            f"present, {len(self.duplicates)} duplicate(s), {len(self.rejected)} rejected"
        )


def _quarantine(
    quarantine_dir: Path | None, batch_id: str, item: ImportItem, data: bytes, reason: str
):
    if quarantine_dir is None:
        return
    folder = quarantine_dir / batch_id
    # The content hash keeps two rejected files of the same name apart.
    stem = f"{hashlib.sha256(data).hexdigest()[:12]}-{Path(item.file_name).name}"
    atomic_write_bytes(folder / stem, data)
    record = {
        "file_name": item.file_name,
        "batch_id": batch_id,
        "reason": reason,
        "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(folder / f"{stem}.reason.json", json.dumps(record, indent=2).encode())


def import_items(
    items: Iterable[ImportItem],
    store: DatasetStore,
    batch_id: str,
    *,
    quarantine_dir: Path | None = None,
    progress: bool = True,
) -> ImportReport:
    """Normalise, deduplicate and split a batch, then commit its new rows to `store` in one step.

    An image whose pixels are already in the dataset adds nothing; under another file name it is
    reported as a duplicate. A file that does not decode is rejected with its reason and copied to
    `quarantine_dir/<batch_id>/`. A patient keeps the split it already has in the dataset.
    """
    store.remove_orphans()
    existing = store.read_metadata()
    known_ids = dict(zip(existing["image_id"], existing["file_name"], strict=True))
    known_splits = dict(zip(existing["patient_id"], existing["split"], strict=True))
    report = ImportReport(batch_id=batch_id)
    rows: list[dict] = []
    pngs: dict[str, bytes] = {}
    batch_names: dict[str, str] = {}

    items = list(items)
    for item in tqdm(items, desc=f"import {batch_id}", unit="img", disable=not progress):
        data = item.read_bytes()
        try:
            normalised = normalise_image(data, item.file_name)
        except ImageDecodeError as err:
            report.rejected.append((item.file_name, str(err)))
            _quarantine(quarantine_dir, batch_id, item, data, str(err))
            logger.warning("rejected %s", err)
            continue

        image_id = normalised.image_id
        if image_id in known_ids:
            if known_ids[image_id] == item.file_name:
                report.already_present.append(item.file_name)
            else:
                report.duplicates.append((item.file_name, known_ids[image_id]))
            continue
        if image_id in batch_names:
            report.duplicates.append((item.file_name, batch_names[image_id]))
            continue

        split = (
            known_splits.get(item.patient_id) or item.split or split_for_patient(item.patient_id)
        )
        if item.split and split != item.split:
            raise ValueError(
                f"{item.file_name}: the publisher's split {item.split!r} conflicts with split "
                f"{split!r} that patient {item.patient_id!r} already has in the dataset"
            )
        if split not in SPLITS:
            raise ValueError(f"{item.file_name}: invalid split {split!r}, expected one of {SPLITS}")
        known_splits[item.patient_id] = split

        row = {
            "image_id": image_id,
            "file_name": item.file_name,
            "label": int(item.label),
            "patient_id": item.patient_id,
            "source": item.source,
            "negative_subtype": item.negative_subtype,
            "batch_id": batch_id,
            "collected_on": item.collected_on,
            "caption": item.caption,
            "split": split,
        }
        for lesion in LESIONS:
            row[lesion] = item.lesions.get(lesion, pd.NA)
        rows.append(row)
        pngs[image_id] = encode_png(normalised.image)
        batch_names[image_id] = item.file_name
        report.added.append(item.file_name)

    if rows:
        store.commit(coerce_metadata(pd.DataFrame(rows)), pngs)
    logger.info(report.summary())
    return report
